package org.mobilevits.demo

import android.graphics.Bitmap
import kotlin.math.max
import kotlin.math.min
import kotlin.math.roundToInt

/**
 * The same steps as mobilevits.data.prepare_image on the host: resize the short side to
 * `resize_short_side` (bilinear), centre-crop `resolution` x `resolution`, then per RGB channel
 * x = (pixel * scale - mean) / std. Normalisation is baked into our artifacts by default, so the
 * manifest's mean/std are 0/1 unless the sidecar said normalization_in_model = false.
 * Output layout follows the manifest (our .pte and .tflite artifacts are both NCHW).
 */
object Preprocessor {

    fun toInput(bitmap: Bitmap, entry: ModelEntry, prepared: Boolean = false): FloatArray {
        val spec = entry.preprocess
        val r = spec.resolution
        var src = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        // The bundled test image is already resized and cropped on the host: feed its pixels as they are.
        if (!(prepared && src.width == r && src.height == r)) src = resizeAndCrop(src, spec)
        val pixels = IntArray(r * r)
        src.getPixels(pixels, 0, r, 0, 0, r, r)
        val out = FloatArray(3 * r * r)
        val plane = r * r
        val nchw = entry.layout == "NCHW"
        for (i in 0 until plane) {
            val c = pixels[i]
            for (ch in 0 until 3) {
                val v = (c shr (16 - 8 * ch)) and 0xFF  // R, G, B
                val x = (v * spec.scale - spec.mean[ch]) / spec.std[ch]
                if (nchw) out[ch * plane + i] = x else out[i * 3 + ch] = x
            }
        }
        return out
    }

    fun resizeAndCrop(bitmap: Bitmap, spec: PreprocessSpec): Bitmap {
        val r = spec.resolution
        val scale = spec.resizeShortSide.toDouble() / min(bitmap.width, bitmap.height)
        val w = max(r, (bitmap.width * scale).roundToInt())
        val h = max(r, (bitmap.height * scale).roundToInt())
        val scaled = Bitmap.createScaledBitmap(bitmap, w, h, true)
        return Bitmap.createBitmap(scaled, (w - r) / 2, (h - r) / 2, r, r)
    }
}
