#!/usr/bin/env python3
"""Reference fixtures for tests/parity: tiny MoE layers computed by PyTorch.

The three blocks follow the Hugging Face modules, rewritten in plain torch (no transformers):
  Mixtral     MixtralSparseMoeBlock: softmax over the router logits, top-k, renormalise;
              experts w2(silu(w1 x) * w3 x).
  Qwen2-MoE   Qwen2MoeSparseMoeBlock: softmax, top-k, renormalise only if norm_topk_prob;
              + sigmoid(shared_expert_gate(x)) * shared_expert(x).
  DeepSeek-V3 DeepseekV3MoE with its DeepseekV3TopkRouter: sigmoid scores, e_score_correction_bias
              added for choosing only, group-limited top-k (group score = sum of the top 2,
              other groups masked with 0.0), weights from the unbiased scores, renormalised
              (+1e-20), times routed_scaling_factor; + the shared experts (one FFN of width
              n_shared * moe_intermediate_size).
Weights and inputs are float32 values; the references are computed in float64 from them, so the
fixture's own rounding error is far below the tests' tolerance. Every routing decision is checked
to have a margin (no near-ties that float32 could flip).

Writes into tests/parity/fixtures/ (run from anywhere; needs torch and numpy, the tests do not):
  <fmt>.safetensors           the layer's tensors under its HF prefix (mixtral: two layers)
  <fmt>_x.npy, <fmt>_y.npy    input [T, d_model] and reference output (float32)
  mixtral_layer1_y.npy        the output of the second Mixtral layer for the same input
  mixtral_c.npy               c of L = sum(y * c)
  mixtral_dx.npy              dL/dx
  mixtral_grads.safetensors   dL/dθ, named "grad." + the HF name
  qwen2_moe_dx.npy, qwen2_moe_grads.safetensors, deepseek_v3_dx.npy, deepseek_v3_grads.safetensors
                              the same for those layers (L = sum(y * c) with mixtral_c.npy)
  mixtral_bf16_reference_y.npy  the first Mixtral layer in float64 on its expert weights rounded to bf16
  mixtral_bf16_torch_y.npy      the same layer as PyTorch's bf16 module computes it
"""
import json
import pathlib
import struct

import numpy as np
import torch

D_MODEL, D_FF, E, T = 16, 32, 8, 10
OUT = pathlib.Path(__file__).resolve().parent / "fixtures"
MARGIN = 1e-4


def write_safetensors(path, tensors, metadata=None):
    """The safetensors layout: u64 header length, JSON header padded with spaces to 8, data."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name].detach().numpy().astype("<f4"))
        data = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def save_npy(name, tensor):
    np.save(OUT / name, tensor.detach().numpy().astype(np.float32))


def param(gen, *shape, fan_in):
    """torch.nn.Linear's U(±1/sqrt(fan_in)), rounded to float32, held in float64."""
    bound = 1.0 / fan_in ** 0.5
    values = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return values.float().double().requires_grad_()


def swiglu(x, w1, w3, w2):
    return torch.nn.functional.silu(x @ w1.T) * (x @ w3.T) @ w2.T


def check_margin(choice, k, what):
    top = torch.topk(choice, k + 1, dim=-1).values
    margin = (top[:, k - 1] - top[:, k]).min().item()
    assert margin > MARGIN, f"{what}: a near-tie (margin {margin}); change the seed"


def experts_out(x, weights, ids, experts):
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            w1, w3, w2 = experts[ids[t, j]]
            y[t] = y[t] + weights[t, j] * swiglu(x[t : t + 1], w1, w3, w2)[0]
    return y


def make_experts(gen, n, d_ff):
    return [(param(gen, d_ff, D_MODEL, fan_in=D_MODEL), param(gen, d_ff, D_MODEL, fan_in=D_MODEL),
             param(gen, D_MODEL, d_ff, fan_in=d_ff)) for _ in range(n)]


def mixtral_block(x, gate, experts, top_k=2):
    scores = torch.softmax(x @ gate.T, dim=-1)
    check_margin(scores, top_k, "mixtral")
    weights, ids = torch.topk(scores, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return experts_out(x, weights, ids, experts)


def mixtral_block_bf16(x, gate, experts, top_k=2):
    """HF MixtralSparseMoeBlock after .to(torch.bfloat16): activations and weights in bf16, the
    routing softmax in float32, the routing weights cast back to bf16 before index_add_."""
    bf16 = torch.bfloat16
    h = x.to(bf16)
    scores = torch.softmax(h @ gate.to(bf16).T, dim=-1, dtype=torch.float)
    weights, ids = torch.topk(scores, top_k, dim=-1)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(bf16)
    y = torch.zeros_like(h)
    for e, (w1, w3, w2) in enumerate(experts):
        rows, slots = torch.where(ids == e)
        xe = h[rows]
        out = (torch.nn.functional.silu(xe @ w1.to(bf16).T) * (xe @ w3.to(bf16).T)) @ w2.to(bf16).T
        y.index_add_(0, rows, out * weights[rows, slots, None])
    return y.double(), ids


def qwen2_moe_block(x, gate, experts, shared, shared_gate, top_k=4, norm_topk_prob=False):
    scores = torch.softmax(x @ gate.T, dim=-1)
    check_margin(scores, top_k, "qwen2-moe")
    weights, ids = torch.topk(scores, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return experts_out(x, weights, ids, experts) + torch.sigmoid(x @ shared_gate.T) * swiglu(x, *shared)


def deepseek_v3_block(x, gate, bias, experts, shared, top_k, n_group, topk_group, scale):
    scores = torch.sigmoid(x @ gate.T)
    choice = scores + bias
    group_scores = choice.view(-1, n_group, E // n_group).topk(2, dim=-1)[0].sum(dim=-1)
    check_margin(group_scores, topk_group, "deepseek-v3 groups")
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, n_group, E // n_group).reshape(-1, E)
    choice = choice.masked_fill(~score_mask.bool(), 0.0)
    assert (choice[score_mask.bool()] > 0).all(), "a biased score is <= 0: 0.0-masking would differ"
    check_margin(choice, top_k, "deepseek-v3")
    ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * scale
    return experts_out(x, weights, ids, experts) + swiglu(x, *shared)


def hf_expert_tensors(prefix, experts, names):
    out = {}
    for i, ws in enumerate(experts):
        for name, w in zip(names, ws):
            out[f"{prefix}experts.{i}.{name}.weight"] = w
    return out


def save_gradients(name, x, c, tensors, block):
    """<name>_y.npy = block(x), and for L = sum(y * c): <name>_dx.npy and <name>_grads.safetensors
    (every tensor with a gradient, named "grad." + its HF name; the selection bias has none)."""
    x = x.clone().requires_grad_()
    y = block(x)
    save_npy(f"{name}_y.npy", y)
    (y * c).sum().backward()
    save_npy(f"{name}_dx.npy", x.grad)
    grads = {"grad." + n: t.grad for n, t in tensors.items() if t.grad is not None}
    write_safetensors(OUT / f"{name}_grads.safetensors", grads)


def main():
    OUT.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(20240517)
    x = (torch.rand(T, D_MODEL, generator=gen, dtype=torch.float64) * 4 - 2).float().double().requires_grad_()

    # Mixtral: two layers in one file (the second checks --prefix), gradients of the first.
    tensors, layers = {}, []
    for layer in range(2):
        prefix = f"model.layers.{layer}.block_sparse_moe."
        gate = param(gen, E, D_MODEL, fan_in=D_MODEL)
        experts = make_experts(gen, E, D_FF)
        tensors[prefix + "gate.weight"] = gate
        tensors.update(hf_expert_tensors(prefix, experts, ("w1", "w3", "w2")))
        layers.append((gate, experts))
    write_safetensors(OUT / "mixtral.safetensors", tensors)
    y = mixtral_block(x, *layers[0])
    save_npy("mixtral_x.npy", x)
    save_npy("mixtral_y.npy", y)
    save_npy("mixtral_layer1_y.npy", mixtral_block(x, *layers[1]))
    c = (torch.rand(T, D_MODEL, generator=gen, dtype=torch.float64) * 2 - 1).float().double()
    save_npy("mixtral_c.npy", c)
    (y * c).sum().backward()
    save_npy("mixtral_dx.npy", x.grad)
    grads = {"grad." + name: t.grad for name, t in tensors.items() if name.startswith("model.layers.0.")}
    write_safetensors(OUT / "mixtral_grads.safetensors", grads)
    x = x.detach()

    # Qwen2-MoE with the HF defaults top_k = 4, norm_topk_prob = False.
    prefix = "model.layers.0.mlp."
    gate = param(gen, E, D_MODEL, fan_in=D_MODEL)
    experts = make_experts(gen, E, D_FF)
    shared = make_experts(gen, 1, 2 * D_FF)[0]
    shared_gate = param(gen, 1, D_MODEL, fan_in=D_MODEL)
    tensors = {prefix + "gate.weight": gate, prefix + "shared_expert_gate.weight": shared_gate}
    tensors.update(hf_expert_tensors(prefix, experts, ("gate_proj", "up_proj", "down_proj")))
    for name, w in zip(("gate_proj", "up_proj", "down_proj"), shared):
        tensors[f"{prefix}shared_expert.{name}.weight"] = w
    write_safetensors(OUT / "qwen2_moe.safetensors", tensors)
    save_npy("qwen2_moe_x.npy", x)
    save_gradients("qwen2_moe", x, c, tensors, lambda x: qwen2_moe_block(x, gate, experts, shared, shared_gate))

    # DeepSeek-V3: top_k 3, n_group 4, topk_group 2, scale 2.5, two shared experts as one FFN.
    gate = param(gen, E, D_MODEL, fan_in=D_MODEL)
    bias = ((torch.rand(E, generator=gen, dtype=torch.float64) * 2 - 1) * 0.1).float().double()
    experts = make_experts(gen, E, D_FF)
    shared = make_experts(gen, 1, 2 * D_FF)[0]
    tensors = {prefix + "gate.weight": gate, prefix + "gate.e_score_correction_bias": bias}
    tensors.update(hf_expert_tensors(prefix, experts, ("gate_proj", "up_proj", "down_proj")))
    for name, w in zip(("gate_proj", "up_proj", "down_proj"), shared):
        tensors[f"{prefix}shared_experts.{name}.weight"] = w
    write_safetensors(OUT / "deepseek_v3.safetensors", tensors)
    save_npy("deepseek_v3_x.npy", x)
    save_gradients("deepseek_v3", x, c, tensors,
                   lambda x: deepseek_v3_block(x, gate, bias, experts, shared, top_k=3, n_group=4, topk_group=2,
                                               scale=2.5))

    # The first Mixtral layer with bf16 expert weights: the float64 reference on the expert
    # weights rounded to bf16 (the router stays float32, as in the library's bf16 layers), and
    # PyTorch's bf16 module on the same weights, which must route every token alike.
    gate, experts = layers[0][0].detach(), [tuple(w.detach() for w in e) for e in layers[0][1]]
    rounded = [tuple(w.to(torch.bfloat16).double() for w in e) for e in experts]
    save_npy("mixtral_bf16_reference_y.npy", mixtral_block(x, gate, rounded))
    y_torch, ids = mixtral_block_bf16(x, gate, experts)
    assert torch.equal(torch.sort(ids).values, torch.sort(torch.topk(x @ gate.T, 2, dim=-1).indices).values)
    save_npy("mixtral_bf16_torch_y.npy", y_torch)


if __name__ == "__main__":
    main()
