"""GPU benchmark: MedGemma 1.5 4B's full architecture, random weights, on one GPU.

Issue 6. A ``Gemma3ForConditionalGeneration`` of MedGemma 1.5 4B's exact shape (below),
randomly initialised on the GPU in bf16 with SDPA attention, and the node's own prompts
through the Gemma 3 processor (the test model's tokenizer and processor, 256 tokens an
image as MedGemma has). Random weights run the same kernels on the same tensor shapes as
the real ones, so the timings are what MedGemma's would be under transformers; the text
is noise. Since a random model may
emit an end-of-turn token at any step, every row is forced to decode exactly the asked
number of tokens (``min_new_tokens = max_new_tokens``; checked after each call).

Two studies, each at batch 1, 2, 4, 8, … until out of GPU memory, until a batch adds
less than ``--min-gain`` to the throughput, or ``--max-batch``:

* chest report: 1 image (896²), ``cxr_report_prompt``, 300 new tokens;
* CT: 85 slices (896²), ``volume_prompt``, 300 new tokens (a reasoned yes/no answer;
  the notebook's cap is 2000, a longer answer adds decode steps at the decode rate).

For each: time to first token (vision tower + prefill), decode steps/s and tokens/s,
latency (``generate`` from inputs on the GPU to the last token), studies/hour =
batch × 3600 / latency, the CPU processor's time (measured for one study, × batch)
and studies/hour with it, and peak GPU memory (``torch.cuda.max_memory_allocated``).
Rows of a batch are copies of one study (identical lengths, no padding). One warm-up
call (8 new tokens) per study type, at batch 1, before its timed runs;
``torch.cuda.synchronize`` around every timing.

Decode roofline: a decode step reads every language-model weight once (the vision tower
runs only in the prefill; the tied embedding is read whole as the output projection)
plus each row's KV cache (sliding layers: at most the 1024-token window), so
steps/s ≤ bandwidth ÷ (weight bytes + batch × KV bytes), summed over the answer's steps.
The bandwidth is the data-sheet figure for the GPU where it is known and a measured
device-to-device copy (read + write bytes ÷ time); both are reported.

Run: ``python -m bench.gpu`` on a CUDA machine (``make bench-gpu``); writes
``bench/results/gpu.json``. Without CUDA it stops and says so, unless ``--smoke``: then
the same code runs on the CPU with a scaled-down model (2 layers), a 2-slice CT and
batches 1–2, writes ``bench/results/gpu-smoke.json``, and checks that the full-size
config builds (on the meta device, no memory). Smoke figures are not GPU figures.

Modules: :mod:`.model` (MedGemma 1.5 4B's configuration, random weights), :mod:`.inputs`
(the synthetic studies and the processor's tensors), :mod:`.roofline` (memory bandwidth
and what it allows a decode step), :mod:`.measure` (timing ``generate`` and the batch
sweep), :mod:`.report` (the machine and the table) and :mod:`.run` (the command line).
"""
