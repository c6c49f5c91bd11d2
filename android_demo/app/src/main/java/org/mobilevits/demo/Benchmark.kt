package org.mobilevits.demo

import android.content.Context
import android.util.Log
import java.io.File
import java.time.Instant
import java.time.temporal.ChronoUnit

/**
 * One benchmark cell, in the order the schema describes: cold load -> first inference -> release ->
 * warm load -> `warmup` untimed runs -> `iterations` timed runs, all on the bundled test image.
 */
object Benchmark {
    const val TAG = "mobilevits-bench"

    fun run(context: Context, store: ModelStore, entry: ModelEntry, threads: Int, warmup: Int, iterations: Int): BenchResult {
        require(iterations >= 1) { "iterations must be >= 1" }
        require(warmup >= 0 && threads >= 0) { "warmup and threads must be >= 0" }
        val file = store.localFile(entry)
        val input = Preprocessor.toInput(store.testImage(entry), entry, prepared = entry.testImagePrepared)

        var t0 = System.nanoTime()
        var runner = ModelRunner.load(entry, file, threads)
        val loadCold = msSince(t0)
        t0 = System.nanoTime()
        runner.run(input)
        val firstInference = msSince(t0)
        val backends = runner.backends
        runner.close()

        t0 = System.nanoTime()
        runner = ModelRunner.load(entry, file, threads)
        val loadWarm = msSince(t0)
        val samples = DoubleArray(iterations)
        var logits = FloatArray(0)
        try {
            repeat(warmup) { runner.run(input) }
            for (i in 0 until iterations) {
                t0 = System.nanoTime()
                logits = runner.run(input)
                samples[i] = msSince(t0)
            }
        } finally {
            runner.close()
        }
        val best = topK(logits, 1).first().first
        Log.i(TAG, "${entry.name}: top-1 $best (expected ${entry.expectedTop1}), median ${Stats.of(samples).medianMs} ms")
        return BenchResult(
            device = DeviceInfo.collect(context),
            model = entry.name,
            architecture = entry.architecture,
            artifact = entry.file,
            backend = entry.backend,
            delegate = entry.delegate,
            precision = entry.precision,
            resolution = entry.resolution,
            threads = threads,
            warmup = warmup,
            iterations = iterations,
            loadMsCold = loadCold,
            loadMsWarm = loadWarm,
            firstInferenceMs = firstInference,
            samplesMs = samples,
            stats = Stats.of(samples),
            top1 = Top1(best, entry.labels.getOrElse(best) { "class $best" }, entry.expectedTop1),
            actualBackends = backends,
            runtimeVersion = if (entry.backend == "executorch") "executorch-android ${BuildConfig.EXECUTORCH_VERSION}"
                             else "litert ${BuildConfig.LITERT_VERSION}",
            timestamp = Instant.now().truncatedTo(ChronoUnit.MILLIS).toString(),
        )
    }

    /** files/bench/<model>.json (read with run-as), mirrored to the external files dir (read with adb pull). */
    fun resultFiles(context: Context, model: String): List<File> =
        listOfNotNull(File(context.filesDir, "bench"), context.getExternalFilesDir("bench"))
            .map { File(it, "$model.json") }

    fun writeAtomically(file: File, text: String) {
        file.parentFile?.mkdirs()
        val tmp = File(file.path + ".partial")
        tmp.writeText(text)
        check(tmp.renameTo(file)) { "cannot move $tmp to $file" }
    }

    private fun msSince(t0: Long): Double = (System.nanoTime() - t0) / 1e6
}
