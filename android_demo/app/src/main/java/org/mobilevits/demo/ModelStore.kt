package org.mobilevits.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import java.io.File
import java.io.InputStream

/**
 * Where the manifest and its files live: the APK's assets/models (bundled by export-app-assets), or a
 * directory given to the bench mode with `--es models_dir DIR` (e.g. pushed to /data/local/tmp).
 */
class ModelStore private constructor(private val context: Context, private val dir: File?) {

    val manifest: AppManifest by lazy { AppManifest.parse(open(MANIFEST).bufferedReader().use { it.readText() }) }

    val location: String get() = dir?.path ?: "assets/$ASSET_DIR"

    /** A path the runtimes can open: bundled assets are copied to filesDir/models once per APK update. */
    fun localFile(entry: ModelEntry): File {
        if (dir != null) return File(dir, entry.file)
        val out = File(context.filesDir, "$ASSET_DIR/${entry.file}")
        val stamp = File(out.path + ".stamp")
        val version = context.packageManager.getPackageInfo(context.packageName, 0).lastUpdateTime.toString()
        if (!out.isFile || !stamp.isFile || stamp.readText() != version) {
            out.parentFile?.mkdirs()
            val tmp = File(out.path + ".partial")
            context.assets.open("$ASSET_DIR/${entry.file}").use { src -> tmp.outputStream().use { src.copyTo(it) } }
            check(tmp.renameTo(out)) { "cannot move $tmp to $out" }
            stamp.writeText(version)
        }
        return out
    }

    /** The bundled test image, decoded without density scaling so its pixels are the PNG's own. */
    fun testImage(entry: ModelEntry): Bitmap {
        val opts = BitmapFactory.Options().apply {
            inScaled = false
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        return open(entry.testImage).use { BitmapFactory.decodeStream(it, null, opts) }
            ?: throw IllegalStateException("cannot decode ${entry.testImage}")
    }

    private fun open(name: String): InputStream =
        if (dir != null) File(dir, name).inputStream() else context.assets.open("$ASSET_DIR/$name")

    companion object {
        const val ASSET_DIR = "models"
        const val MANIFEST = "manifest.json"

        fun bundled(context: Context) = ModelStore(context.applicationContext, null)

        fun directory(context: Context, path: String) = ModelStore(context.applicationContext, File(path))
    }
}
