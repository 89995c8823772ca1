"""Tiny GGUF multimodal fixtures, written at test time with the `gguf` package (PyPI).

`write_llava_projector` writes a LLaVA-1.5-style projector ("mlp") with random weights:
a CLIP vision tower of `blocks` pre-norm transformer blocks of width `width` on
`image_size`-pixel images cut into `patch_size` patches, then LLaVA's two-layer MLP
(`mm.0` -> GELU -> `mm.2`) up to `n_out`, which must equal the text model's `n_embd`
(576 for SmolLM2-135M). llama.cpp loads it through `Llava15ChatHandler` and the generic
`MTMDChatHandler` alike. Every key and tensor name is llama.cpp's own, from
tools/mtmd/clip-impl.h (ggml-org/llama.cpp, the mtmd code llama-cpp-python 0.3.36 vendors):

  KEY_PROJ_TYPE "clip.projector_type" (PROJECTOR_TYPE_NAMES: PROJECTOR_TYPE_MLP = "mlp"),
  KEY_HAS_VISION_ENC "clip.has_vision_encoder", KEY_USE_GELU "clip.use_gelu",
  KEY_N_EMBD / KEY_N_FF / KEY_N_BLOCK / KEY_PROJ_DIM / KEY_N_HEAD / KEY_LAYER_NORM_EPS
  "clip.%s.embedding_length|feed_forward_length|block_count|projection_dim|
  attention.head_count|attention.layer_norm_epsilon" with %s = "vision",
  KEY_IMAGE_SIZE "clip.vision.image_size", KEY_PATCH_SIZE "clip.vision.patch_size",
  KEY_IMAGE_MEAN / KEY_IMAGE_STD "clip.vision.image_mean|image_std";
  TN_PATCH_EMBD "v.patch_embd.weight", TN_CLASS_EMBD "v.class_embd",
  TN_POS_EMBD "%s.position_embd.weight", TN_LN_PRE "%s.pre_ln.%s",
  TN_ATTN_Q/K/V/OUTPUT "%s.blk.%d.attn_q|attn_k|attn_v|attn_out.%s",
  TN_LN_1 / TN_LN_2 "%s.blk.%d.ln1|ln2.%s", TN_FFN_UP / TN_FFN_DOWN "%s.blk.%d.ffn_up|ffn_down.%s",
  TN_LLAVA_PROJ "mm.%d.%s" (indices 0 and 2, as LLaVA's nn.Sequential(Linear, GELU, Linear)).

The mean and std are CLIP's (OpenAI's preprocessing, as LLaVA-1.5's projector declares).
numpy shapes are the reverse of ggml's `ne` (gguf's writer reverses them), so a
(n_out, width) matrix is ggml's [width, n_out] that `ggml_mul_mat` applies to width-wide
rows.

`copy_with_chat_template` copies a GGUF model (quantised tensors byte for byte) with a new
`tokenizer.chat_template`, the way gguf's own scripts/gguf_new_metadata.py does.
"""

from __future__ import annotations

from pathlib import Path

# SmolLM2's ChatML template (tokenizer.chat_template of SmolLM2-135M-Instruct) changed only
# where it prints `content`: a string as it is, a list of parts as their texts in order.
# MTMDChatHandler replaces each image_url part by a text part holding llama.cpp's media
# marker (llama_chat_format.py, MTMDChatHandler._convert_content_part_for_template), so
# this template puts the image where the part was.
PARTS_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_llava_projector(path: Path, n_out: int = 576, width: int = 64, image_size: int = 56,
                          patch_size: int = 14, blocks: int = 1, heads: int = 2, seed: int = 0) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    ff = 2 * width
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", image_size)
    writer.add_uint32("clip.vision.patch_size", patch_size)
    writer.add_uint32("clip.vision.embedding_length", width)
    writer.add_uint32("clip.vision.feed_forward_length", ff)
    writer.add_uint32("clip.vision.projection_dim", n_out)
    writer.add_uint32("clip.vision.block_count", blocks)
    writer.add_uint32("clip.vision.attention.head_count", heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])

    def random(name: str, *shape: int, scale: float = 0.02) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(prefix: str) -> None:
        writer.add_tensor(f"{prefix}.weight", np.ones(width, np.float32))
        random(f"{prefix}.bias", width)

    n_positions = (image_size // patch_size) ** 2 + 1  # the patches and the class token
    random("v.patch_embd.weight", width, 3, patch_size, patch_size)
    random("v.class_embd", width)
    random("v.position_embd.weight", n_positions, width)
    norm("v.pre_ln")
    for i in range(blocks):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            random(f"v.blk.{i}.{part}.weight", width, width)
            random(f"v.blk.{i}.{part}.bias", width)
        norm(f"v.blk.{i}.ln1")
        norm(f"v.blk.{i}.ln2")
        random(f"v.blk.{i}.ffn_up.weight", ff, width)
        random(f"v.blk.{i}.ffn_up.bias", ff)
        random(f"v.blk.{i}.ffn_down.weight", width, ff)
        random(f"v.blk.{i}.ffn_down.bias", width)
    random("mm.0.weight", n_out, width)
    random("mm.0.bias", n_out)
    random("mm.2.weight", n_out, n_out)
    random("mm.2.bias", n_out)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def copy_with_chat_template(source: Path, dest: Path, template: str = PARTS_TEMPLATE) -> Path:
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(dest), arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        if field.name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_chat_template(template)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return Path(dest)
