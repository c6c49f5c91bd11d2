package org.mobilevits.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.net.Uri
import android.os.Bundle
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/** Pick an image (camera, gallery or the bundled test image), run the chosen model, show top-5 and latency. */
class MainActivity : ComponentActivity() {

    private lateinit var store: ModelStore
    private lateinit var spinner: Spinner
    private lateinit var threadsField: EditText
    private lateinit var imageView: ImageView
    private lateinit var result: TextView
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()  // runners are single-threaded
    private var runner: ModelRunner? = null
    private var runnerKey: String? = null

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri: Uri? ->
        uri?.let { decode(it) }?.let { classify(it, prepared = false) }
    }
    private val takePicture = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bmp: Bitmap? ->
        bmp?.let { classify(it, prepared = false) }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        spinner = findViewById(R.id.model_spinner)
        threadsField = findViewById(R.id.threads)
        imageView = findViewById(R.id.image)
        result = findViewById(R.id.result)

        store = ModelStore.bundled(this)
        val models = try {
            store.manifest.models.filter { it.backend == "executorch" || it.backend == "tflite" }
        } catch (e: Exception) {
            emptyList()
        }
        if (models.isEmpty()) {
            result.setText(R.string.no_models)
            return
        }
        spinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, models)

        findViewById<Button>(R.id.gallery).setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        findViewById<Button>(R.id.camera).setOnClickListener { takePicture.launch(null) }
        findViewById<Button>(R.id.test_image).setOnClickListener {
            val entry = selected() ?: return@setOnClickListener
            classify(store.testImage(entry), prepared = entry.testImagePrepared, isTestImage = true)
        }
    }

    private fun selected(): ModelEntry? = spinner.selectedItem as? ModelEntry

    private fun decode(uri: Uri): Bitmap? =
        contentResolver.openInputStream(uri)?.use {
            BitmapFactory.decodeStream(it, null, BitmapFactory.Options().apply {
                inPreferredConfig = Bitmap.Config.ARGB_8888
            })
        }

    private fun classify(bitmap: Bitmap, prepared: Boolean, isTestImage: Boolean = false) {
        val entry = selected() ?: return
        val threads = threadsField.text.toString().toIntOrNull()?.coerceAtLeast(0) ?: 0
        imageView.setImageBitmap(bitmap)
        result.text = "running ${entry.name}…"
        worker.execute {
            val text = try {
                val key = "${entry.name}@$threads"
                var loadMs: Double? = null
                if (runnerKey != key) {
                    runner?.close()
                    runner = null
                    val t0 = System.nanoTime()
                    runner = ModelRunner.load(entry, store.localFile(entry), threads)
                    loadMs = (System.nanoTime() - t0) / 1e6
                    runnerKey = key
                }
                val input = Preprocessor.toInput(bitmap, entry, prepared)
                val t0 = System.nanoTime()
                val logits = runner!!.run(input)
                val ms = (System.nanoTime() - t0) / 1e6
                describe(entry, logits, ms, loadMs, isTestImage)
            } catch (t: Throwable) {
                "error: $t"
            }
            runOnUiThread { result.text = text }
        }
    }

    private fun describe(entry: ModelEntry, logits: FloatArray, ms: Double, loadMs: Double?, isTestImage: Boolean): String {
        val lines = mutableListOf("${entry.backend} / ${entry.delegate} / ${entry.precision}, ${entry.resolution}px")
        loadMs?.let { lines += String.format(Locale.US, "load: %.1f ms", it) }
        lines += String.format(Locale.US, "inference: %.2f ms (single run; use the bench mode for statistics)", ms)
        topK(logits, 5).forEachIndexed { i, (idx, p) ->
            lines += String.format(Locale.US, "%d. %-24s %5.1f%%", i + 1, entry.labels.getOrElse(idx) { "class $idx" }, 100 * p)
        }
        runner?.backends?.let { lines += "backends: ${it.joinToString()}" }
        if (isTestImage) {
            val top1 = topK(logits, 1).first().first
            val verdict = if (top1 == entry.expectedTop1) "OK" else "MISMATCH"
            lines += String.format(Locale.US, "expected top-1 on the test image: %s -> %s (host margin %.3g)",
                entry.labels.getOrElse(entry.expectedTop1) { "class ${entry.expectedTop1}" }, verdict, entry.expectedMargin)
        }
        return lines.joinToString("\n")
    }

    override fun onDestroy() {
        worker.execute { runner?.close(); runner = null }
        worker.shutdown()
        super.onDestroy()
    }
}
