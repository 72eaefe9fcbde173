"""The toy world's vocabulary and a word-level tokenizer for it.

Every caption of the grammar (``turbo.toy.world``) is a sequence of these words, so a word-level
tokenizer needs no training and gives each word one token: the toy text encoders see "red" as
one id, not as three bytes. The tokenizer is a transformers ``PreTrainedTokenizerFast`` (a
``tokenizers`` WordLevel model), so it is saved as ``tokenizer.json`` in a model folder and
loaded by ``AutoTokenizer`` like any real family's tokenizer.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from turbo.toy.world import ARTICLES, COLOURS, CONJUNCTION, MOTIONS, SHAPES

SPECIAL: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
WORDS: tuple[str, ...] = (*ARTICLES, *COLOURS, *SHAPES, "moving", "standing",
                          *(m for m in MOTIONS if m != "still"), "still", CONJUNCTION)
VOCAB: dict[str, int] = {w: i for i, w in enumerate((*SPECIAL, *WORDS))}
# The longest caption: two objects, "a <colour> <shape> moving <dir>" x 2 + "and" = 11 words, + </s>
MAX_LENGTH = 16


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased, whitespace-split, one id per word of ``VOCAB``; ``</s>`` appended (T5 style),
    ``<pad>`` = 0 for padding, ``<unk>`` for any word outside the grammar."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", VOCAB["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_LENGTH)
