package org.mobilevits.demo

import org.json.JSONArray
import org.json.JSONObject

/**
 * manifest.json written by `mobilevits export-app-assets` (schema: mobilevits/workflows/schemas/app_manifest.schema.json).
 * Only the fields the app needs are read; tests/test_app_assets.py checks every key read here exists in the schema.
 */
class AppManifest(val app: String, val models: List<ModelEntry>) {

    fun find(name: String): ModelEntry? = models.firstOrNull { it.name == name }

    companion object {
        const val SCHEMA_VERSION = 1

        fun parse(text: String): AppManifest {
            val root = JSONObject(text)
            val version = root.getInt("schema_version")
            require(version == SCHEMA_VERSION) {
                "manifest schema_version $version; this app reads $SCHEMA_VERSION (re-run export-app-assets)"
            }
            val models = root.getJSONArray("models")
            return AppManifest(root.getString("app"), List(models.length()) { parseEntry(models.getJSONObject(it)) })
        }

        private fun parseEntry(o: JSONObject): ModelEntry {
            val input = o.getJSONObject("input")
            val output = o.getJSONObject("output")
            val pp = o.getJSONObject("preprocess")
            val image = o.getJSONObject("test_image")
            val expected = o.getJSONObject("expected")
            return ModelEntry(
                name = o.getString("name"),
                architecture = o.getString("architecture"),
                file = o.getString("file"),
                backend = o.getString("backend"),
                delegate = o.getString("delegate"),
                precision = o.getString("precision"),
                inputShape = ints(input.getJSONArray("shape")),
                layout = input.getString("layout"),
                numClasses = output.getInt("num_classes"),
                preprocess = PreprocessSpec(
                    resolution = pp.getInt("resolution"),
                    resizeShortSide = pp.getInt("resize_short_side"),
                    scale = pp.getDouble("scale").toFloat(),
                    mean = floats(pp.getJSONArray("mean")),
                    std = floats(pp.getJSONArray("std")),
                ),
                labels = strings(o.getJSONArray("labels")),
                testImage = image.getString("file"),
                testImagePrepared = image.getBoolean("prepared"),
                expectedTop1 = expected.getInt("top1_index"),
                expectedMargin = expected.getDouble("margin"),
            )
        }

        private fun ints(a: JSONArray) = IntArray(a.length()) { a.getInt(it) }
        private fun floats(a: JSONArray) = FloatArray(a.length()) { a.getDouble(it).toFloat() }
        private fun strings(a: JSONArray) = List(a.length()) { a.getString(it) }
    }
}

/** How to turn an image into the model's input: resize, centre-crop, x = (pixel * scale - mean) / std. */
class PreprocessSpec(
    val resolution: Int,
    val resizeShortSide: Int,
    val scale: Float,
    val mean: FloatArray,
    val std: FloatArray,
)

class ModelEntry(
    val name: String,
    val architecture: String,
    val file: String,
    val backend: String,
    val delegate: String,
    val precision: String,
    val inputShape: IntArray,
    val layout: String,
    val numClasses: Int,
    val preprocess: PreprocessSpec,
    val labels: List<String>,
    val testImage: String,
    val testImagePrepared: Boolean,
    val expectedTop1: Int,
    val expectedMargin: Double,
) {
    val resolution: Int get() = preprocess.resolution
    override fun toString(): String = name
}
