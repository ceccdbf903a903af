"""The same GPT in PyTorch (nanoGPT's layout), to time minillm against on the same machine.

Built from a minillm params dict so both start from identical weights. Used only by the
benchmarks; minillm itself never imports torch.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T              # tied LM head
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    @classmethod
    def from_minillm(cls, model):
        """Copy minillm's weights; nn.Linear stores (out, in), minillm (in, out)."""
        net = cls(model.config)
        p = {k: torch.tensor(v) for k, v in model.params.items()}
        with torch.no_grad():
            net.wte.weight.copy_(p["wte.weight"])
            net.wpe.weight.copy_(p["wpe.weight"])
            for i, b in enumerate(net.h):
                g = lambda name: p[f"h.{i}.{name}"]  # noqa: E731
                for ln, name in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
                    ln.weight.copy_(g(f"{name}.weight")), ln.bias.copy_(g(f"{name}.bias"))
                for lin, name in ((b.c_attn, "attn.c_attn"), (b.attn_proj, "attn.c_proj"),
                                  (b.c_fc, "mlp.c_fc"), (b.mlp_proj, "mlp.c_proj")):
                    lin.weight.copy_(g(f"{name}.weight").T), lin.bias.copy_(g(f"{name}.bias"))
            net.ln_f.weight.copy_(p["ln_f.weight"]), net.ln_f.bias.copy_(p["ln_f.bias"])
        return net

    def optimizer(self, lr, betas, weight_decay):
        """AdamW with decay on 2-D tensors only, as minillm (and nanoGPT) do."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        rest = [p for p in self.parameters() if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)
