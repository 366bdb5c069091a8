"""Stage 2's caption decoder: projector psi + a causal LLM reading the caption embeddings.

The prefix is the frozen text encoder's OUTPUT for the VLV encoder's caption embeddings
(the paper feeds ``last_hidden_state``, not the raw embeddings). psi = Linear(d, H), GELU,
Linear(H, H) maps it to the LLM's width; the caption's tokens follow, then the EOS token.

The loss covers the caption tokens AND the EOS token, and nothing else: labels come from
the attention mask, not from token ids, so a tokenizer whose pad token IS its EOS token
(Qwen2.5's base models) still learns to stop. (The official code pads with EOS and masks
every EOS out of the loss, so its model never learns to stop.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from vlv_pipeline.errors import InputError, MissingInputError

IGNORE = -100


def prefix_projector(in_dim: int, hidden: int) -> nn.Sequential:
    """psi: Linear(d, H), GELU, Linear(H, H)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class CaptionTokens(torch.utils.data.Dataset):
    """Item ``i``: caption ``i`` tokenised (+ EOS) and right-padded to ``length``, as
    ``(input_ids, attention_mask)``. Tokenised per item, so no split's tokens sit in memory;
    ``length`` is the longest caption's (at most ``max_tokens``, found in one pass that keeps
    nothing), which is what ``tokenize_captions`` pads the whole list to."""

    def __init__(self, tokenizer, captions: list[str], max_tokens: int) -> None:
        if tokenizer.eos_token_id is None:
            raise InputError(
                "the stage-2 tokenizer has no eos_token_id: set one so captions can end"
            )
        self.tokenizer, self.captions, self.max_tokens = tokenizer, captions, max_tokens
        self.length = max(len(self._ids(c)) for c in captions)

    def _ids(self, caption: str) -> list[int]:
        ids = self.tokenizer(caption, add_special_tokens=False).input_ids[: self.max_tokens - 1]
        return [*ids, self.tokenizer.eos_token_id]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._ids(self.captions[i])
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((self.length,), self.tokenizer.eos_token_id if pad is None else pad)
        attention_mask = torch.zeros(self.length, dtype=torch.long)
        input_ids[: len(ids)] = torch.tensor(ids)
        attention_mask[: len(ids)] = 1
        return input_ids, attention_mask


def tokenize_captions(tokenizer, captions: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Caption tokens + EOS, right-padded to the longest (at most ``max_tokens`` incl. EOS).

    Returns ``input_ids`` and ``attention_mask`` (1 on caption tokens and the EOS).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the stage-2 tokenizer has no eos_token_id: set one so captions can end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for caption in captions:
        ids = tokenizer(caption, add_special_tokens=False).input_ids[: max_tokens - 1]
        rows.append([*ids, eos])
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class CaptionDecoder(nn.Module):
    """psi + causal LM. ``forward`` gives the caption loss; ``generate`` the caption ids."""

    def __init__(self, llm, prefix_dim: int):
        super().__init__()
        self.llm = llm
        self.prefix_dim = prefix_dim
        self.psi = prefix_projector(prefix_dim, llm.config.hidden_size)

    def prefix(self, conditions: torch.Tensor) -> torch.Tensor:
        dtype = self.llm.get_input_embeddings().weight.dtype
        return self.psi(conditions.to(self.psi[0].weight.dtype)).to(dtype)

    def forward(
        self, conditions: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        prefix = self.prefix(conditions)
        tokens = self.llm.get_input_embeddings()(input_ids)
        b, n = prefix.shape[:2]
        ones = torch.ones((b, n), dtype=attention_mask.dtype, device=attention_mask.device)
        ignore = torch.full((b, n), IGNORE, dtype=input_ids.dtype, device=input_ids.device)
        labels = torch.cat([ignore, input_ids.masked_fill(attention_mask == 0, IGNORE)], dim=1)
        out = self.llm(
            inputs_embeds=torch.cat([prefix, tokens], dim=1),
            attention_mask=torch.cat([ones, attention_mask], dim=1),
            labels=labels,
            use_cache=False,
        )
        return out.loss

    @torch.no_grad()
    def generate(
        self,
        conditions: torch.Tensor,
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        eos_token_id: int,
        pad_token_id: int,
        use_cache: bool = True,
        prefix_dtype: torch.dtype | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Batched generation with the KV cache; returns only the new tokens (B, <= max).

        ``prefix_dtype``: the prefix is cast to it before the LLM reads it, whatever the
        LLM's own dtype (the official ``generate()`` casts it to bfloat16, in fp32 runs too)."""
        prefix = self.prefix(conditions)
        if prefix_dtype is not None:
            prefix = prefix.to(prefix_dtype)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.llm.generate(
            inputs_embeds=prefix,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **generate_kwargs,
        )

    # -- on disk: llm/ (a transformers model directory), psi.safetensors, decoder.json ------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        llm = self.llm
        if hasattr(llm, "merge_and_unload"):  # LoRA adapters: save a plain merged model
            import copy

            llm = copy.deepcopy(llm).merge_and_unload()
        llm.save_pretrained(path / "llm")
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.psi.state_dict().items()},
            str(path / "psi.safetensors"),
        )
        (path / "decoder.json").write_text(json.dumps({"prefix_dim": self.prefix_dim}))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None) -> CaptionDecoder:
        from transformers import AutoModelForCausalLM

        path = Path(path)
        for needed in ("llm", "psi.safetensors", "decoder.json"):
            if not (path / needed).exists():
                raise MissingInputError(f"{path} is not a caption decoder directory: no {needed}")
        from vlv_pipeline.models.tensor_files import load_tensors, model_dir_hint, naming_damaged

        config = json.loads((path / "decoder.json").read_text())
        kwargs = {"dtype": dtype} if dtype is not None else {}
        with naming_damaged(path / "llm", what_to_do=model_dir_hint(path)):
            llm = AutoModelForCausalLM.from_pretrained(path / "llm", **kwargs)
        decoder = cls(llm, int(config["prefix_dim"]))
        psi = load_tensors(path / "psi.safetensors", what_to_do=model_dir_hint(path))
        decoder.psi.load_state_dict(psi)
        return decoder.eval()
