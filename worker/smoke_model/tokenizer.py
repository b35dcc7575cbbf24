"""The smoke model's tokenizer: a byte-level BPE trained offline on a built-in corpus, with R1V3's special
tokens and an R1V3-style ChatML chat template."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from vlmbatch.schema.contracts.reasoning import THINK_CLOSE, THINK_OPEN

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT)
# Ordinary added tokens: kept whole by the tokenizer, yet not dropped by `skip_special_tokens`, so the
# reasoning trace stays splittable in decoded text.
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)

# R1V3-style ChatML with string content (vLLM then inserts its `<image>` placeholder into the user text);
# the generation prompt opens the reasoning trace as R1V3's own template does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    f"{{%- if add_generation_prompt %}}{{{{- '<|im_start|>assistant\\n{THINK_OPEN}\\n' }}}}{{%- endif %}}"
)

# Written by hand rather than by save_pretrained, whose output depends on the transformers version (5.x names
# a `TokenizersBackend` class and moves the template to chat_template.jinja); this loads as a
# PreTrainedTokenizerFast with the chat template inline.
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": None,
    "eos_token": IM_END,
    "pad_token": ENDOFTEXT,
    "model_max_length": 32768,
    "clean_up_tokenization_spaces": False,
    "chat_template": CHAT_TEMPLATE,
}

# A small built-in corpus: enough merges for readable noise; the rest of the vocabulary is filler.
_CORPUS = (
    "The image shows a red car parked next to a tall building on a sunny day.",
    "Let me think step by step about what is in the picture before I answer.",
    "There are three people, two dogs and a bicycle in the photo.",
    "First, count the objects. Then compare their sizes. Finally, give the answer.",
    "The chart has an x axis for time and a y axis for the number of sales.",
    "Question: what color is the sky? Answer: the sky is blue with white clouds.",
    "Wait, I should check the left side of the image again to be sure.",
    "So the area of the triangle is one half times the base times the height.",
    "The text in the sign reads: open from nine in the morning until six in the evening.",
    "Therefore, the correct option is B, because the angle is larger than ninety degrees.",
    "A cat is sleeping on a blue sofa while a child reads a book by the window.",
    "The table lists the price, the quantity and the total for each item.",
)


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on the built-in corpus, padded with filler ids to exactly `vocab_size`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    added = len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + added:
        raise ValueError(f"vocab_size {vocab_size} < {len(alphabet) + added} (byte alphabet + added tokens)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - added, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(_CORPUS, trainer=trainer)

    # Fillers go into the BPE vocabulary rather than being ~150k added tokens (which every encode matches
    # against); no merge reaches them, and their ASCII names decode as plain text when sampled.
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for index in range(vocab_size - added - len(vocab)):
        vocab[f"<|filler_{index}|>"] = len(vocab)
    padded = Tokenizer.from_str(json.dumps(spec))
    padded.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    padded.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    return padded


def token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise AssertionError(f"{token} missing from the tokenizer just built")
    return token_id
