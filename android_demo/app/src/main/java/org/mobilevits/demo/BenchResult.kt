package org.mobilevits.demo

import android.app.ActivityManager
import android.content.Context
import android.os.Build
import android.os.PowerManager
import org.json.JSONArray
import org.json.JSONObject

/*
 * The bench result JSON: ONE schema for both apps, mobilevits/workflows/schemas/bench_result.schema.json,
 * parsed by `mobilevits bench --device adb...` (mobilevits.workflows.app_assets.load_bench_result).
 * tests/test_app_assets.py reads the put("...") keys of each class below and checks them against the
 * schema (BenchResult = the root object, DeviceInfo = "device", Stats = "stats", Top1 = "top1"), so
 * renaming a field here or there fails that test. JSONObject.put(key, null) REMOVES the key: nullable
 * values go through orNull().
 */

private fun Any?.orNull(): Any = this ?: JSONObject.NULL

class BenchResult(
    val device: DeviceInfo,
    val model: String,
    val architecture: String,
    val artifact: String,
    val backend: String,
    val delegate: String,
    val precision: String,
    val resolution: Int,
    val threads: Int,
    val warmup: Int,
    val iterations: Int,
    val loadMsCold: Double,
    val loadMsWarm: Double,
    val firstInferenceMs: Double,
    val samplesMs: DoubleArray,
    val stats: Stats,
    val top1: Top1,
    val actualBackends: List<String>?,
    val runtimeVersion: String,
    val timestamp: String,
) {
    fun toJson(): JSONObject = JSONObject().apply {
        put("schema_version", SCHEMA_VERSION)
        put("app", "android_demo")
        put("device", device.toJson())
        put("model", model)
        put("architecture", architecture)
        put("artifact", artifact)
        put("backend", backend)
        put("delegate", delegate)
        put("precision", precision)
        put("resolution", resolution)
        put("compute_units", JSONObject.NULL)  // Core ML only
        put("threads", threads)
        put("warmup", warmup)
        put("iterations", iterations)
        put("load_ms_cold", loadMsCold)
        put("load_ms_warm", loadMsWarm)
        put("first_inference_ms", firstInferenceMs)
        put("samples_ms", JSONArray().apply { samplesMs.forEach { put(it) } })
        put("stats", stats.toJson())
        put("top1", top1.toJson())
        put("actual_backends", actualBackends?.let { JSONArray(it) }.orNull())
        put("runtime_version", runtimeVersion)
        put("timestamp", timestamp)
    }

    companion object {
        const val SCHEMA_VERSION = 1
    }
}

class DeviceInfo(
    val model: String,
    val manufacturer: String,
    val osVersion: String,
    val soc: String?,
    val abi: String?,
    val apiLevel: Int,
    val cpuCores: Int,
    val memoryMb: Long?,
    val thermalState: String?,
) {
    fun toJson(): JSONObject = JSONObject().apply {
        put("model", model)
        put("manufacturer", manufacturer)
        put("os", "Android")
        put("os_version", osVersion)
        put("soc", soc.orNull())
        put("abi", abi.orNull())
        put("api_level", apiLevel)
        put("cpu_cores", cpuCores)
        put("memory_mb", memoryMb.orNull())
        put("thermal_state", thermalState.orNull())
    }

    companion object {
        fun collect(context: Context): DeviceInfo {
            val am = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
            val mem = ActivityManager.MemoryInfo().also { am.getMemoryInfo(it) }  // filled, unlike minibench's
            val soc = if (Build.VERSION.SDK_INT >= 31) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else Build.HARDWARE
            return DeviceInfo(
                model = Build.MODEL,
                manufacturer = Build.MANUFACTURER,
                osVersion = Build.VERSION.RELEASE,
                soc = soc,
                abi = Build.SUPPORTED_ABIS.firstOrNull(),
                apiLevel = Build.VERSION.SDK_INT,
                cpuCores = Runtime.getRuntime().availableProcessors(),
                memoryMb = mem.totalMem / (1024 * 1024),
                thermalState = thermalState(context),
            )
        }

        private fun thermalState(context: Context): String? {
            if (Build.VERSION.SDK_INT < 29) return null
            val pm = context.getSystemService(Context.POWER_SERVICE) as PowerManager
            return when (pm.currentThermalStatus) {
                PowerManager.THERMAL_STATUS_NONE -> "none"
                PowerManager.THERMAL_STATUS_LIGHT -> "light"
                PowerManager.THERMAL_STATUS_MODERATE -> "moderate"
                PowerManager.THERMAL_STATUS_SEVERE -> "severe"
                PowerManager.THERMAL_STATUS_CRITICAL -> "critical"
                PowerManager.THERMAL_STATUS_EMERGENCY -> "emergency"
                PowerManager.THERMAL_STATUS_SHUTDOWN -> "shutdown"
                else -> "unknown"
            }
        }
    }
}

/**
 * Summary statistics, defined as in the schema (and mobilevits.workflows.app_assets.compute_stats): median;
 * p90 by linear interpolation at rank 0.9 * (n - 1); trimmed mean of sorted[n/10 until 9n/10] (all
 * samples when that is empty), as ExecuTorch's minibench; cv = sample standard deviation / mean.
 */
class Stats(val medianMs: Double, val p90Ms: Double, val trimmedMeanMs: Double, val cv: Double) {
    fun toJson(): JSONObject = JSONObject().apply {
        put("median_ms", medianMs)
        put("p90_ms", p90Ms)
        put("trimmed_mean_ms", trimmedMeanMs)
        put("cv", cv)
    }

    companion object {
        fun of(samples: DoubleArray): Stats {
            require(samples.isNotEmpty()) { "no samples" }
            val xs = samples.sortedArray()
            val n = xs.size
            val median = if (n % 2 == 1) xs[n / 2] else (xs[n / 2 - 1] + xs[n / 2]) / 2.0
            val pos = 0.9 * (n - 1)
            val lo = Math.floor(pos).toInt()
            val hi = Math.min(lo + 1, n - 1)
            val p90 = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
            val a = n / 10
            val b = n * 9 / 10
            val kept = if (b > a) xs.copyOfRange(a, b) else xs
            val mean = xs.sum() / n
            val sd = if (n > 1) Math.sqrt(xs.sumOf { (it - mean) * (it - mean) } / (n - 1)) else 0.0
            return Stats(median, p90, kept.sum() / kept.size, if (mean > 0) sd / mean else 0.0)
        }
    }
}

class Top1(val index: Int, val label: String, val expectedIndex: Int?) {
    val matches: Boolean? get() = expectedIndex?.let { it == index }

    fun toJson(): JSONObject = JSONObject().apply {
        put("index", index)
        put("label", label)
        put("expected_index", expectedIndex.orNull())
        put("matches", matches.orNull())
    }
}
