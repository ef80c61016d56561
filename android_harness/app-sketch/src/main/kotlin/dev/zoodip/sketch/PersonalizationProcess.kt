// A minimal sketch (not built in this repository) of how an Android app backend runs a zoodip
// personalization as a child process, follows its progress and cancels it.
//
// The contract it relies on is the real CLI's (sdk/zoodip/cli.py, sdk/zoodip/api.py):
//   python -m zoodip.cli personalize --model EXPORT --train_data_dir PHOTOS --output_dir OUT \
//          --placeholder_token "<my-dog>" --initializer_token dog --no-progress --progress-jsonl -
//   stdout: one JSON object per line, {"type": "progress", "event": ..., "step": ..., ...}
//           (nothing else is written to stdout when --progress-jsonl is "-")
//   stderr: the final summary; on a user error one line "error: ..." and exit status 2
//   SIGINT / SIGTERM: the run stops after the current step, writes a checkpoint there (atomically),
//           emits a "cancelled" event and exits with status 130 / 143; "--resume" continues from it
//           (a second signal interrupts at once, keeping the last checkpoint)
//   SIGKILL (e.g. the low-memory killer): the process dies at once; the last periodic checkpoint
//           (--checkpointing_steps) is intact and "--resume" continues from it
// tests/harness/test_android_harness.py checks that the fields read below are the ones the real CLI emits,
// with these types, and that SIGINT -> 130 -> --resume works.
//
// The app has to ship a CPython with numpy, onnxruntime, Pillow and tqdm for the phone's ABI
// (arm64-v8a) plus sdk/zoodip; `python` below is that interpreter. An app that embeds Python
// in-process (e.g. Chaquopy) would rather call zoodip.api.PersonalizationJob directly.
package dev.zoodip.sketch

import org.json.JSONException
import org.json.JSONObject
import java.io.File
import kotlin.concurrent.thread

/** One line of the --progress-jsonl stream (zoodip.trainer.Progress). */
data class ProgressEvent(
    val event: String,          // "setup", "step", "eval", "validation", "done", "cancelled", "early-stopped"
    val step: Int,
    val total: Int,
    val loss: Double?,          // L(v) of this step's sample (null before the first step)
    val evalLoss: Double?,      // set on "eval" events and at the end
    val keptDims: Int?,         // Subspace Gradient dimensions kept (null until the first fit)
    val forwards: Int,          // UNet forward passes so far
    val elapsedS: Double,
    val forwardsPerS: Double,
    val etaS: Double?,          // from the steps' own times
    val phase: String?,         // "setup" events: what is being done before the first step
    val path: String?,          // "validation" events: the preview grid written
)

private fun JSONObject.optDoubleOrNull(key: String): Double? = if (isNull(key)) null else getDouble(key)
private fun JSONObject.optIntOrNull(key: String): Int? = if (isNull(key)) null else getInt(key)
private fun JSONObject.optStringOrNull(key: String): String? = if (isNull(key)) null else getString(key)

/** Parses one stdout line; null for anything that is not a progress event. */
fun parseProgressLine(line: String): ProgressEvent? {
    val obj = try { JSONObject(line) } catch (e: JSONException) { return null }
    if (obj.optString("type") != "progress") return null
    return ProgressEvent(
        event = obj.getString("event"),
        step = obj.getInt("step"),
        total = obj.getInt("total"),
        loss = obj.optDoubleOrNull("loss"),
        evalLoss = obj.optDoubleOrNull("eval_loss"),
        keptDims = obj.optIntOrNull("kept_dims"),
        forwards = obj.getInt("forwards"),
        elapsedS = obj.getDouble("elapsed_s"),
        forwardsPerS = obj.getDouble("forwards_per_s"),
        etaS = obj.optDoubleOrNull("eta_s"),
        phase = obj.optStringOrNull("phase"),
        path = obj.optStringOrNull("path"),
    )
}

sealed class JobOutcome {
    data class Finished(val embedding: File, val last: ProgressEvent?) : JobOutcome()
    /** Cancelled (SIGINT, exit 130) or killed (SIGTERM/SIGKILL/low-memory killer): resumable. */
    data class Interrupted(val exitCode: Int, val resumable: Boolean) : JobOutcome()
    /** A user error: exit status 2 and one line "error: ..." on stderr. */
    data class Failed(val exitCode: Int, val message: String) : JobOutcome()
}

class PersonalizationProcess(
    private val python: File,            // the app's bundled interpreter
    private val sdkDir: File,            // folder that contains the zoodip package
    private val exportDir: File,         // zoodip export folder (.onnx or .ort graphs)
    private val photosDir: File,
    private val outputDir: File,
    private val placeholderToken: String,
    private val initializerToken: String,
    private val maxTrainSteps: Int = 1000,
    private val checkpointingSteps: Int = 10,
    private val threads: Int = 0,
) {
    @Volatile private var pid: Int = -1
    @Volatile private var process: Process? = null

    /** True when outputDir holds a run that was interrupted (checkpoint but no embedding yet). */
    val canResume: Boolean
        get() = File(outputDir, "checkpoint.npz").isFile && !File(outputDir, "learned_embeds.safetensors").isFile

    /**
     * Starts the run (or continues it with [resume]); [onProgress] is called on a background thread
     * for each event, [onDone] once with the outcome.
     */
    fun start(resume: Boolean, onProgress: (ProgressEvent) -> Unit, onDone: (JobOutcome) -> Unit) {
        val cli = mutableListOf(
            python.absolutePath, "-m", "zoodip.cli", "personalize",
            "--model", exportDir.absolutePath,
            "--train_data_dir", photosDir.absolutePath,
            "--output_dir", outputDir.absolutePath,
            "--placeholder_token", placeholderToken,
            "--initializer_token", initializerToken,
            "--max_train_steps", maxTrainSteps.toString(),
            "--checkpointing_steps", checkpointingSteps.toString(),
            "--threads", threads.toString(),
            "--no-progress", "--progress-jsonl", "-",
        )
        if (resume) cli += "--resume"
        // The shell prints its pid and execs Python in place, so that pid is Python's: java.lang.Process
        // has no portable pid() on older Android versions, and cancel() needs it for SIGINT.
        val command = listOf("/system/bin/sh", "-c", "echo \$\$; exec \"\$0\" \"\$@\"") + cli
        val builder = ProcessBuilder(command).directory(outputDir.parentFile)
        builder.environment()["PYTHONPATH"] = sdkDir.absolutePath
        builder.environment()["PYTHONUNBUFFERED"] = "1"
        val proc = builder.start()
        process = proc

        val stderrTail = ArrayDeque<String>()
        val errReader = thread(name = "zoodip-stderr") {
            proc.errorStream.bufferedReader().forEachLine { line ->
                synchronized(stderrTail) { stderrTail.addLast(line); if (stderrTail.size > 20) stderrTail.removeFirst() }
            }
        }
        thread(name = "zoodip-progress") {
            var last: ProgressEvent? = null
            proc.inputStream.bufferedReader().useLines { lines ->
                for ((index, line) in lines.withIndex()) {
                    if (index == 0) { pid = line.trim().toIntOrNull() ?: -1; continue }
                    parseProgressLine(line)?.let { last = it; onProgress(it) }
                }
            }
            val code = proc.waitFor()
            errReader.join()
            pid = -1
            val embedding = File(outputDir, "learned_embeds.safetensors")
            onDone(when {
                code == 0 && embedding.isFile -> JobOutcome.Finished(embedding, last)
                code == 2 -> JobOutcome.Failed(code, synchronized(stderrTail) {
                    stderrTail.lastOrNull { it.startsWith("error: ") }?.removePrefix("error: ") ?: "zoodip failed"
                })
                else -> JobOutcome.Interrupted(code, resumable = File(outputDir, "checkpoint.npz").isFile)
            })
        }
    }

    /**
     * Asks the run to stop: SIGINT makes the CLI checkpoint after the current step and exit with status
     * 130; if it has not exited after [graceMillis], it is killed (the
     * checkpoint is written atomically, so it is intact either way). Resume with start(resume = true).
     */
    fun cancel(graceMillis: Long = 30_000) {
        val proc = process ?: return
        val p = pid
        if (p > 0) android.os.Process.sendSignal(p, 2 /* SIGINT */) else proc.destroy()
        thread(name = "zoodip-cancel") {
            if (!proc.waitFor(graceMillis, java.util.concurrent.TimeUnit.MILLISECONDS)) proc.destroyForcibly()
        }
    }
}
