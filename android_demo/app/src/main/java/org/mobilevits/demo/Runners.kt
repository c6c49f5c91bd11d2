package org.mobilevits.demo

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.Interpreter

/** One loaded model. Not thread-safe: use it from one thread. */
interface ModelRunner : AutoCloseable {
    /** Backends the runtime reports for the loaded program (ExecuTorch method metadata), else null. */
    val backends: List<String>?

    /** Logits for one float input laid out as the manifest says. */
    fun run(input: FloatArray): FloatArray

    companion object {
        /** Load `file` for `entry`; `threads` = 0 leaves the thread count to the runtime. */
        fun load(entry: ModelEntry, file: File, threads: Int): ModelRunner {
            require(file.isFile) { "model file not found: $file" }
            return when (entry.backend) {
                "executorch" -> ExecuTorchRunner(file, entry, threads)
                "tflite" -> LiteRtRunner(file, entry, threads)
                else -> throw IllegalArgumentException("android_demo cannot run ${entry.backend} models (${entry.file})")
            }
        }
    }
}

/** ExecuTorch (org.pytorch:executorch-android): Module.load, loadMethod("forward"), forward(EValue). */
class ExecuTorchRunner(file: File, entry: ModelEntry, threads: Int) : ModelRunner {
    private val module = Module.load(file.absolutePath, Module.LOAD_MODE_FILE, threads)
    private val input = Tensor.allocateFloatBuffer(entry.inputShape.fold(1) { a, b -> a * b })
    private val tensor = Tensor.fromBlob(input, LongArray(entry.inputShape.size) { entry.inputShape[it].toLong() })

    init {
        module.loadMethod("forward")  // part of the load time, not of the first inference
    }

    override val backends: List<String> = module.getMethodMetadata("forward").backends.toList()

    override fun run(input: FloatArray): FloatArray {
        this.input.rewind()
        this.input.put(input)
        val outputs = module.forward(EValue.from(tensor))
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}

/** LiteRT (com.google.ai.edge.litert:litert): the classic Interpreter with XNNPACK, float in, float out. */
class LiteRtRunner(file: File, entry: ModelEntry, threads: Int) : ModelRunner {
    private val interpreter: Interpreter
    private val inputBuffer: ByteBuffer
    private val outputBuffer: ByteBuffer

    init {
        val options = Interpreter.Options().setUseXNNPACK(true)
        if (threads > 0) options.setNumThreads(threads)
        interpreter = Interpreter(file, options)
        val shape = interpreter.getInputTensor(0).shape()
        require(shape.contentEquals(entry.inputShape)) {
            "${entry.file}: input shape ${shape.contentToString()} != manifest ${entry.inputShape.contentToString()}"
        }
        inputBuffer = ByteBuffer.allocateDirect(4 * shape.fold(1) { a, b -> a * b }).order(ByteOrder.nativeOrder())
        outputBuffer = ByteBuffer.allocateDirect(interpreter.getOutputTensor(0).numBytes()).order(ByteOrder.nativeOrder())
    }

    override val backends: List<String>? = null

    override fun run(input: FloatArray): FloatArray {
        inputBuffer.rewind()
        inputBuffer.asFloatBuffer().put(input)
        outputBuffer.rewind()
        interpreter.run(inputBuffer, outputBuffer)
        outputBuffer.rewind()
        val out = FloatArray(outputBuffer.remaining() / 4)
        outputBuffer.asFloatBuffer().get(out)
        return out
    }

    override fun close() = interpreter.close()
}

/** Indices of the k largest logits, best first, with softmax probabilities. */
fun topK(logits: FloatArray, k: Int): List<Pair<Int, Float>> {
    val max = logits.maxOrNull() ?: return emptyList()
    val exps = logits.map { Math.exp((it - max).toDouble()) }
    val sum = exps.sum()
    return logits.indices.sortedByDescending { logits[it] }.take(k).map { it to (exps[it] / sum).toFloat() }
}
