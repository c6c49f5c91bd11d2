package org.mobilevits.demo

import android.app.Activity
import android.os.Bundle
import android.util.Log
import android.view.WindowManager
import android.widget.TextView
import java.io.File
import org.json.JSONObject

/**
 * Bench mode for the harness (`mobilevits bench ARTIFACT --device adb[:SERIAL] ...`):
 *
 *   adb shell am start -W -S -n org.mobilevits.demo/.BenchActivity \
 *       --es model <manifest name> --ei threads N --ei warmup W --ei iterations N [--es models_dir DIR]
 *   adb shell run-as org.mobilevits.demo cat files/bench/<model>.json
 *
 * Writes files/bench/<model>.json (and the same under /sdcard/Android/data/<pkg>/files/bench/),
 * atomically, then finishes. Failures go to files/bench/<model>.error.json as {"error": "..."}.
 * Logcat tag: mobilevits-bench ("done <path>" / "failed ...").
 */
class BenchActivity : Activity() {

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        val status = TextView(this).apply { setPadding(32, 32, 32, 32) }
        setContentView(status)

        val model = intent.getStringExtra(EXTRA_MODEL)
        val threads = intent.getIntExtra(EXTRA_THREADS, 0)
        val warmup = intent.getIntExtra(EXTRA_WARMUP, 10)
        val iterations = intent.getIntExtra(EXTRA_ITERATIONS, 50)
        val modelsDir = intent.getStringExtra(EXTRA_MODELS_DIR)
        if (model.isNullOrEmpty()) {
            Log.e(Benchmark.TAG, "failed: missing --es $EXTRA_MODEL <name>")
            finish()
            return
        }
        val outputs = Benchmark.resultFiles(this, model)
        val errors = outputs.map { File(it.path.removeSuffix(".json") + ".error.json") }
        (outputs + errors).forEach { it.delete() }  // never leave a stale result for the harness to read
        status.text = "benchmarking $model: threads=$threads warmup=$warmup iterations=$iterations"

        Thread({
            try {
                val store = if (modelsDir != null) ModelStore.directory(this, modelsDir) else ModelStore.bundled(this)
                val entry = store.manifest.find(model)
                    ?: throw IllegalArgumentException("no model '$model' in ${store.location}/manifest.json; have " +
                                                      store.manifest.models.joinToString { it.name })
                val json = Benchmark.run(this, store, entry, threads, warmup, iterations).toJson().toString(2)
                outputs.forEach { Benchmark.writeAtomically(it, json) }
                Log.i(Benchmark.TAG, "done ${outputs.first().path}")
            } catch (t: Throwable) {
                Log.e(Benchmark.TAG, "failed: $t", t)
                val json = JSONObject().put("error", t.toString()).toString()
                errors.forEach { runCatching { Benchmark.writeAtomically(it, json) } }
            } finally {
                runOnUiThread { finish() }
            }
        }, "mobilevits-bench").start()
    }

    companion object {
        const val EXTRA_MODEL = "model"
        const val EXTRA_THREADS = "threads"
        const val EXTRA_WARMUP = "warmup"
        const val EXTRA_ITERATIONS = "iterations"
        const val EXTRA_MODELS_DIR = "models_dir"
    }
}
