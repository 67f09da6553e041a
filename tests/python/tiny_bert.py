"""A BERT-like sequence classifier written for the tests, taking three inputs as Hugging
Face's BERT does: token ids, an attention mask (1 for tokens, 0 for padding) and token
types. The mask becomes an additive bias on the attention scores; the classifier reads the
first token. `tiny_bert_inputs` makes a batch of the three, padded to random lengths."""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.size(0), x.size(1), x.size(2)
        hd = d // self.heads
        q = self.query(x).view(b, s, self.heads, hd).transpose(1, 2)
        k = self.key(x).view(b, s, self.heads, hd).transpose(1, 2)
        v = self.value(x).view(b, s, self.heads, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)) + bias
        y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).contiguous().view(b, s, d)
        return self.out(y)


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.ln_1 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * dim, dim)
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x + self.attention(x, bias))
        return self.ln_2(x + self.proj(self.act(self.fc(x))))


class TinyBert(nn.Module):
    def __init__(self, vocab: int = 256, seq: int = 16, dim: int = 32, heads: int = 4, layers: int = 2,
                 classes: int = 3) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(seq, dim)
        self.token_type = nn.Embedding(2, dim)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([Layer(dim, heads) for _ in range(layers)])
        self.classifier = nn.Linear(dim, classes)
        self.register_buffer("positions", torch.arange(seq).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.word(input_ids) + self.position(self.positions)
        if token_type_ids is not None:
            x = x + self.token_type(token_type_ids)
        x = self.ln(x)
        bias = torch.zeros_like(x[:, None, None, :, 0])
        if attention_mask is not None:
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return self.classifier(x[:, 0])


def tiny_bert(**kwargs) -> TinyBert:
    return TinyBert(**kwargs)


def tiny_bert_inputs(batch: int, generator: torch.Generator, vocab: int = 256,
                     seq: int = 16) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and token types of `batch` sequences of random lengths
    (at least 2 tokens, padded to `seq`), each a pair of segments."""
    lengths = torch.randint(2, seq + 1, (batch,), generator=generator)
    positions = torch.arange(seq).unsqueeze(0)
    mask = (positions < lengths.unsqueeze(1)).long()
    ids = torch.randint(1, vocab, (batch, seq), generator=generator) * mask
    types = ((positions >= (lengths // 2).unsqueeze(1)).long()) * mask
    return ids, mask, types


def tiny_bert_keyword_inputs(batch: int, generator: torch.Generator, vocab: int = 256,
                             seq: int = 16) -> Dict[str, torch.Tensor]:
    """Token ids and token types by keyword, as a data collator's dict; no attention mask,
    which comes between them in the forward's parameters."""
    ids, _, types = tiny_bert_inputs(batch, generator, vocab, seq)
    return {"input_ids": ids, "token_type_ids": types}
