import pytest
import torch
import transformers as tf

from conftest import FAMILIES, VLM_FAMILIES, random_image
from toolkit.models.adapters import adapter_for
from toolkit.models.loading import Sample, load_image, load_model


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_structure(family, tiny_models):
    m = tiny_models(family)
    assert m.adapter.family == family
    assert m.num_layers == 3 and m.hidden_size == 64
    assert len(m.layer_modules) == m.num_layers
    # The layer path names the decoder blocks of the text model, nothing else.
    assert all(type(mod).__name__.endswith("DecoderLayer") for mod in m.layer_modules)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_prompt_has_one_placeholder_and_left_padding(family, tiny_models):
    m = tiny_models(family)
    prompt = m.format_prompt("what is this", image=True)
    if m.adapter.image_placeholder:
        assert prompt.count(m.adapter.image_placeholder) == 1
    enc = m.encode([(random_image(), "what is this"), (random_image(1), "who")])
    mask = enc["attention_mask"]
    assert mask[:, -1].all(), "left padding: every row ends with a real token"
    assert (mask[1, 0] == 0) or (mask[0, 0] == 0) or mask.all()


def test_real_configs_on_meta_device():
    llava_cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=336, patch_size=14),
        text_config=tf.LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    qwen_cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
    )
    for cfg, cls, layers, width in ((llava_cfg, tf.LlavaForConditionalGeneration, 32, 4096),
                                    (qwen_cfg, tf.Qwen2_5_VLForConditionalGeneration, 28, 3584)):
        with torch.device("meta"):
            model = cls(cfg)
        adapter = adapter_for(model.config)
        assert adapter.num_layers(model.config) == layers
        assert adapter.hidden_size(model.config) == width
        assert len(adapter.layer_modules(model)) == layers
        assert adapter.layer_modules(model)[0].self_attn.q_proj.weight.shape[1] == width


def test_unsupported_architecture_lists_supported():
    cfg = tf.BertConfig()
    with pytest.raises(ValueError, match="Unsupported architecture: model_type='bert'.*llava.*qwen2_5_vl.*idefics3"):
        adapter_for(cfg)


def test_layer_out_of_range(tiny_models):
    m = tiny_models("llava")
    with pytest.raises(ValueError, match=r"Layer 3 is out of range: this model has 3 decoder layers"):
        m.check_layers([0, 3])
    assert m.check_layers([-1]) == [2]
    assert m.check_layers(None) == [0, 1, 2]  # FitConfig(layers=None): every decoder layer
    with pytest.raises(ValueError, match="No layers given"):
        m.check_layers([])


def test_image_given_to_text_only_model(tiny_models):
    m = tiny_models("llama")
    with pytest.raises(ValueError, match="text-only llama"):
        m.encode([(random_image(), "hello")])


def test_prompt_without_image_token(tiny_models):
    m = tiny_models("llava")
    with pytest.raises(ValueError, match=r"0 '<image>' image placeholders but one image was given"):
        m.encode([(random_image(), "USER: hello ASSISTANT:")], formatted=True)
    with pytest.raises(ValueError, match="contains the image placeholder"):
        m.encode([Sample("USER: <image> hello ASSISTANT:")], formatted=True)


def test_corrupt_image_file(tmp_path):
    bad = tmp_path / "face.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"Could not decode image file .*face.png"):
        load_image(str(bad))
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        load_image(str(tmp_path / "missing.png"))


def test_model_object_needs_processor():
    model, _ = __import__("toolkit.models.tiny", fromlist=["x"]).build_tiny("llava")
    with pytest.raises(ValueError, match="needs its processor"):
        load_model(model)
