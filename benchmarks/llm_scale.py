"""Throughput and peak memory of LLM unlearning at scale: one unlearning step (gradient ascent on the answer NLL,
through the harness's own training loop) and the evaluation passes (answer log-probabilities, as every TOFU/MUSE
probability, truth-ratio and MIA metric computes them; greedy generation, as ROUGE does), on a Llama built from
its config (random weights: speed does not depend on them).

    python benchmarks/llm_scale.py                              # ~100M parameters on CPU
    python benchmarks/llm_scale.py --size 1b --device cuda --dtype bfloat16   # Llama-3.2-1B's shape in bf16, on a GPU
    python benchmarks/llm_scale.py --size 1b --device cuda --lora 16 --gradient-checkpointing
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # LlamaConfig fields
    "100m": dict(vocab_size=32000, hidden_size=768, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048),
    "1b": dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, tie_word_embeddings=True),  # Llama-3.2-1B
}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak RSS


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_of(n: int, prompt: int, answer: int, vocab: int, device: torch.device, generator: torch.Generator):
    """Random question-answer token rows in the harness's layout (labels only on the answer)."""
    from unlearn.data.tensordata import TensorData

    ids = torch.randint(3, vocab, (n, prompt + answer), generator=generator)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                      prompt_ids=ids[:, :prompt].clone(), prompt_mask=torch.ones(n, prompt, dtype=torch.long)).to(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=list(SIZES), default="100m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--answer", type=int, default=128, help="answer tokens per row")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per row (ROUGE)")
    parser.add_argument("--steps", type=int, default=3, help="timed unlearning steps (after one warm-up step)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype")
    parser.add_argument("--lora", type=int, default=None, help="LoRA rank (default: every weight trains)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn.models.lora import LoraSettings, prepare_for_training
    from unlearn.runtime import Runtime
    from unlearn.tasks.llm import LanguageModelTask
    from unlearn.training import OptimConfig, Streams, optimise

    runtime = Runtime.from_config(args.device, args.precision, threads=args.threads)
    device = runtime.device
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZES[args.size], max_position_embeddings=4096))
    model = model.to(device=device, dtype=getattr(torch, args.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    model = prepare_for_training(model, LoraSettings(r=args.lora), args.gradient_checkpointing)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    task = LanguageModelTask(eval_batch_size=args.batch, max_new_tokens=args.new_tokens)
    generator = torch.Generator().manual_seed(0)
    data = batch_of(args.batch * (args.steps + 1), args.prompt, args.answer, SIZES[args.size]["vocab_size"], device,
                    generator)
    tokens_per_row = args.prompt + args.answer
    print(f"Llama {args.size}: {n_params / 1e6:.0f}M parameters ({trained / 1e6:.1f}M trained"
          f"{f', LoRA r={args.lora}' if args.lora else ''}), device {device}, {args.dtype} weights, "
          f"precision {runtime.precision}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, threads {torch.get_num_threads()}; "
          f"rows of {args.prompt} prompt + {args.answer} answer tokens, batch {args.batch}")

    # ---- one unlearning step: gradient ascent through unlearn.training.optimise -------------------------------
    recipe = OptimConfig(epochs=1, lr=1e-5, batch_size=args.batch, optimizer="adamw", weight_decay=0.0)
    objective = lambda m, forget, _retain: -task.loss(m, forget).mean()  # noqa: E731
    optimise(model, objective, Streams(forget=data.subset(torch.arange(args.batch)), mode="forget"), recipe, runtime,
             generator, desc="warm-up", max_steps=1)
    reset_peak(device)
    start = time.perf_counter()
    optimise(model, objective, Streams(forget=data.subset(torch.arange(args.batch, len(data))), mode="forget"), recipe,
             runtime, generator, desc="unlearn", max_steps=args.steps)
    sync(device)
    step = (time.perf_counter() - start) / args.steps
    print(f"unlearning step: {step:.3f} s, {args.batch * tokens_per_row / step:,.0f} tokens/s, "
          f"peak memory {peak_memory_gib(device):.2f} GiB")

    # ---- evaluation: answer log-probabilities (forward only) and greedy generation -----------------------------
    eval_rows = data.subset(torch.arange(args.batch))
    task.token_statistics(model, eval_rows, runtime)  # warm-up
    reset_peak(device)
    start = time.perf_counter()
    task.token_statistics(model, data, runtime)
    sync(device)
    scored = time.perf_counter() - start
    print(f"evaluation, answer log-probabilities: {len(data) * tokens_per_row / scored:,.0f} tokens/s "
          f"({len(data)} rows in {scored:.2f} s), peak memory {peak_memory_gib(device):.2f} GiB")
    reset_peak(device)
    start = time.perf_counter()
    task.generate_answers(model, eval_rows, runtime)
    sync(device)
    generated = time.perf_counter() - start
    print(f"evaluation, greedy generation: {args.batch * args.new_tokens / generated:,.1f} new tokens/s "
          f"({args.batch} rows × {args.new_tokens} tokens in {generated:.2f} s), peak memory "
          f"{peak_memory_gib(device):.2f} GiB")


if __name__ == "__main__":
    main()
