#!/usr/bin/env python3
"""Makes the latent and text-conditioned fixtures: small random-weight
StableDiffusionPipeline and LDMPipeline directories saved by diffusers itself,
with transformers' and diffusers' outputs for each component and for whole renders.

- A byte-level BPE vocabulary of CLIP's form (the 256 byte symbols, each again with
  `</w>`, the merges, the two special tokens) trained with `tokenizers` on the
  prompts below, saved as SD saves its tokenizer (vocab.json, merges.txt,
  tokenizer_config.json, special_tokens_map.json); `tokenizer-cases.json` holds
  transformers' CLIPTokenizer ids for every prompt, padded as each pipeline pads.
- sd1-tiny: SD 1.x's form (conv projections, one head count, quick_gelu, PNDM,
  `<|endoftext|>` padding), float32. sd2-tiny: SD 2.x's form (linear projections,
  heads per block, upcast attention, gelu, v-prediction DDIM, `!` padding, no
  quant_conv), saved only as the fp16 variant files. ldm-tiny: CompVis'
  ldm-celebahq-256 layout (VQModel + UNet2DModel, DDIM), bfloat16.
- Per component: text-encoder states, the conditional U-Net, the autoencoder's
  encoder moments and decoder, the VQ encoder and its quantising decoder.
- Whole renders from a given x_T, by diffusers' own pipelines (CFG, a negative
  prompt), the decoder's output before clamping.

(tokenizers' BPE trainer may order merges of equal count differently from run
to run: every fixture is regenerated together, so they always agree.)

Every reference is float64 beside diffusers' float32 run; each tolerance is
twice that deviation plus 1e-5 (components) or max(2e-3, 2x) (renders).

Needs torch, diffusers, transformers, tokenizers (PyPI); from the repository root:
    python tools/reference/make_latent_fixtures.py
"""
import copy
import json
import pathlib
import random
import shutil

import numpy as np
import torch
import diffusers
import transformers
import tokenizers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LDMPipeline,
                       PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, UNet2DConditionModel,
                       UNet2DModel, VQModel)
import diffusers.models.autoencoders.vae as vae_module
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
from PIL import Image
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from make_sampler_fixtures import Philox

OUT = pathlib.Path("Tests/LatentFixtures")
MADE_WITH = (f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
             f"tokenizers {tokenizers.__version__}, torch {torch.__version__}")

WORDS = ("a photo of an astronaut riding horse on mars black and white picture trouser ankle boot sneaker "
         "sandal shirt t-shirt pullover dress coat bag painting oil canvas portrait landscape mountain river "
         "city night street rain cat dog red blue green highly detailed 4k octane render trending artstation "
         "by greg rutkowski cinematic lighting soft focus wide angle lens studio ghibli watercolor sketch").split()

TRICKY = [
    "", " ", "a photo of an astronaut riding a horse on mars", "A PHOTO OF A CAT", "MiXeD CaSe WoRdS",
    "don't stop", "it's here", "I'll go", "we've been", "they're", "you'd", "I'm", "''quoted'' ``x``", "rock'n'roll",
    "O'Neil's dog's bone", "'s 't 're 've 'm 'll 'd", "can't won't shan't", "Café crème brûlée", "naïve résumé",
    "Straße", "ﬁne ligature", "e\u0301 combining", "中文提示词", "日本語のテキスト", "한국어", "😀 emoji 🎉",
    "ΣΊΣΥΦΟΣ ΟΔΥΣΣΕΥΣ", "tab\tand\nnewline\r\nend", "multiple     spaces", "   leading and trailing   ", "3.14159",
    "1234567890", "$100 & 50% off!", "hello!!!???...", "a-b_c/d\\e|f", "<|endoftext|>", "<|startoftext|> hi",
    "trouser<|endoftext|>boot", "👍🏽 thumbs", "x" * 120, "word " * 90, "Ünïcödé ÀÉÎÕÜ", "١٢٣ arabic digits",
    "½ ¾ ² ³", "non\u00a0breaking\u2003em space", "zero\u200bwidth", "(parentheses) [brackets] {braces}",
    "email@example.com http://x.org/a?b=c", "#hashtag @mention", "C++ and C#", "1st 2nd 3rd 4th", "v1.5, v2.1",
    "8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3",
    "(masterpiece:1.2), best quality, ((ultra-detailed))", "black-and-white", "a photo of a trouser.",
    "<|ENDOFTEXT|> shouted", "Hello!World", "İstanbul ǅ ß ﬃ", "\u2028line\u2029para\u3000ideographic",
]


def prompts():
    rng = random.Random(7)
    out = list(TRICKY)
    punctuation = [",", ".", "!", "?", ";", ":", "'", "-", "...", " ,", "!!", "&", "(", ")"]
    while len(out) < 320:
        words = []
        for _ in range(rng.randint(1, 40 if rng.random() < 0.2 else 12)):
            word = rng.choice(WORDS)
            roll = rng.random()
            if roll < 0.1:
                word = word.upper()
            elif roll < 0.2:
                word = word.capitalize()
            elif roll < 0.25:
                word += str(rng.randint(0, 999))
            elif roll < 0.3:
                word += "'s"
            words.append(word)
            if rng.random() < 0.25:
                words.append(rng.choice(punctuation))
        out.append((" " * rng.randint(1, 3) if rng.random() < 0.3 else " ").join(words))
    return out


def clip_normalizer():
    return normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])


def clip_pre_tokenizer():
    pattern = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])


def train_vocabulary(corpus, merges_wanted):
    """CLIP's vocabulary form over merges that `tokenizers` learns from `corpus`."""
    model = Tokenizer(BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    model.normalizer = clip_normalizer()
    model.pre_tokenizer = clip_pre_tokenizer()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(vocab_size=2 * 256 + merges_wanted, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                         show_progress=False, min_frequency=2)
    model.train_from_iterator(corpus, trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(model.to_str())["model"]["merges"]]
    # the byte symbols in GPT-2's order, as CLIP's vocabulary lists them
    symbols = [chr(b) for b in range(ord("!"), ord("~") + 1)] + [chr(b) for b in range(ord("¡"), ord("¬") + 1)] \
        + [chr(b) for b in range(ord("®"), ord("ÿ") + 1)]
    n = 0
    for b in range(256):
        if not (ord("!") <= b <= ord("~") or ord("¡") <= b <= ord("¬") or ord("®") <= b <= ord("ÿ")):
            symbols.append(chr(256 + n))
            n += 1
    vocab = symbols + [s + "</w>" for s in symbols]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def save_tokenizer(directory, vocab, merges, pad):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
         "tokenizer_class": "CLIPTokenizer"}, indent=2) + "\n")
    return CLIPTokenizer.from_pretrained(directory)


def perturb(model, generator):
    with torch.no_grad():
        for p in model.parameters():
            scale = p.detach().abs().mean().item() or 0.05
            p.add_(torch.randn(p.shape, generator=generator) * 0.5 * scale)


def compare(f, inputs32, name, summary, directory, extra=None):
    """Runs `f` in float32 and float64 and writes the float64 result with the deviation."""
    with torch.no_grad():
        out32 = f(*[x.float() if x.is_floating_point() else x for x in inputs32], dtype=torch.float32)
        out64 = f(*[x.double() if x.is_floating_point() else x for x in inputs32], dtype=torch.float64)
    deviation = (out32.double() - out64).abs().max().item()
    np.save(directory / f"{name}-expected.npy", out64.numpy().astype(np.float32))
    summary[name] = {"diffusers_f32_max_abs_deviation": deviation, "tolerance": 2 * deviation + 1e-5,
                     "expected_max_abs": out64.abs().max().item(), **(extra or {})}
    print(f"{directory.name}/{name}: f32 deviation {deviation:.3e}")


def text_encoder(hidden, layers, heads, act, vocab_size, generator):
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=hidden,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    model = CLIPTextModel(config).eval()
    perturb(model, generator)
    return model


def component_cases(directory, pipe_class, generator, tokenizer, summary, latent_shape, image_shape, vq=False):
    """The per-component references of a saved pipeline, each component loaded as saved."""
    kw = {"torch_dtype": torch.float32}
    if (directory / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists():
        kw["variant"] = "fp16"
    batch = 2
    if not vq:
        text = CLIPTextModel.from_pretrained(directory / "text_encoder", **kw).eval()
        prompts_ = ["a photo of an ankle boot", "BLACK and white, trousers!!"]
        ids = tokenizer(prompts_, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        compare(lambda i, dtype: copy.deepcopy(text).to(dtype)(i).last_hidden_state, [ids], "text", summary, directory,
                {"prompts": prompts_})
        unet = UNet2DConditionModel.from_pretrained(directory / "unet", **kw).eval()
        sample = torch.randn(batch, *latent_shape, generator=generator)
        states = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
        np.save(directory / "unet-input.npy", sample.numpy())
        np.save(directory / "unet-states.npy", states.numpy())
        compare(lambda x, s, dtype: copy.deepcopy(unet).to(dtype)(x, torch.tensor([10, 700]), encoder_hidden_states=s).sample,
                [sample, states], "unet", summary, directory, {"timesteps": [10, 700]})
        vae = AutoencoderKL.from_pretrained(directory / "vae", **kw).eval()
        image = torch.rand(batch, *image_shape, generator=generator) * 2 - 1
        np.save(directory / "encoder-input.npy", image.numpy())

        def moments(x, dtype):
            model = copy.deepcopy(vae).to(dtype)
            h = model.encoder(x)
            return model.quant_conv(h) if model.quant_conv is not None else h
        compare(moments, [image], "encoder", summary, directory)
        latents = torch.randn(batch, *latent_shape, generator=generator)
        np.save(directory / "decoder-input.npy", latents.numpy())
        compare(lambda z, dtype: copy.deepcopy(vae).to(dtype).decode(z).sample, [latents], "decoder", summary, directory)
    else:
        vqvae = VQModel.from_pretrained(directory / "vqvae", **kw).eval()
        image = torch.rand(batch, *image_shape, generator=generator) * 2 - 1
        np.save(directory / "encoder-input.npy", image.numpy())
        compare(lambda x, dtype: copy.deepcopy(vqvae).to(dtype).encode(x).latents, [image], "encoder", summary, directory)
        latents = torch.randn(batch, *latent_shape, generator=generator)
        np.save(directory / "decoder-input.npy", latents.numpy())
        compare(lambda z, dtype: copy.deepcopy(vqvae).to(dtype).decode(z).sample, [latents], "decoder", summary, directory)


def render_case(directory, summary, name, x, run, job):
    """A whole render: x_T in, diffusers' decoded image (before clamping) in float32 and float64."""
    np.save(directory / f"{name}-noise.npy", x.numpy())
    out32 = run(torch.float32, x.float())
    out64 = run(torch.float64, x.double())
    deviation = (out32.double() - out64).abs().max().item()
    np.save(directory / f"{name}-expected.npy", out64.numpy().astype(np.float32))
    (directory / f"{name}.json").write_text(json.dumps(
        {**job, "init_noise": f"{name}-noise.npy", "formats": ["npy"]}, indent=1, ensure_ascii=False) + "\n")
    summary[name] = {"job": f"{name}.json", "diffusers_f32_max_abs_deviation": deviation,
                     "tolerance": max(2e-3, 2 * deviation)}
    print(f"{directory.name}/{name}: f32 deviation {deviation:.3e}")


def sd_render(directory, variant, prompt, negative, steps, scale):
    def run(dtype, x):
        pipe = StableDiffusionPipeline.from_pretrained(directory, torch_dtype=torch.float32, variant=variant,
                                                       safety_checker=None, requires_safety_checker=False)
        pipe = pipe.to(dtype)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            latents = pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=scale,
                           latents=x, output_type="latent", height=8 * x.shape[2] // 4, width=8 * x.shape[3] // 4).images
            return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return run


def img2img_render(directory, variant, scheduler_class, prompts, negatives, steps, scale, strength, seeds):
    """StableDiffusionImg2ImgPipeline from init.png with one generator per image,
    as the host keeps one stream per image: each image's posterior sample is the
    normals of the host's stream for its seed (drawn after x_T, which the job
    gives), the noise added to it is the job's init_noise."""
    def run(dtype, x):
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(directory, torch_dtype=torch.float32, variant=variant,
                                                              safety_checker=None, requires_safety_checker=False)
        if scheduler_class is not None:
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        pipe = pipe.to(dtype)
        pipe.set_progress_bar_config(disable=True)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        streams = {id(g): Philox(seed) for g, seed in zip(generators, seeds)}

        def host_noise(shape, generator=None, device=None, dtype=None, layout=None):
            if isinstance(generator, list):  # the noise add_noise mixes in: the job's init_noise
                return x.to(dtype)
            values = [streams[id(generator)].normal() for _ in range(int(np.prod(shape)))]
            return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)

        vae_module.randn_tensor = img2img_module.randn_tensor = host_noise
        with torch.no_grad():
            latents = pipe(prompt=prompts, negative_prompt=negatives, image=Image.open(directory / "init.png"),
                           strength=strength, num_inference_steps=steps, guidance_scale=scale, generator=generators,
                           output_type="latent").images
            return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return run


def init_image(directory, generator):
    """A 16x16 RGB picture: a gradient with a bright square and noise."""
    y, x = np.mgrid[0:16, 0:16]
    image = np.stack([x * 16, y * 16, 255 - x * 8], axis=-1).astype(np.float64)
    image[4:10, 5:12] = [250, 240, 30]
    image += torch.randn(16, 16, 3, generator=generator).numpy() * 12
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB").save(directory / "init.png")


def ldm_render(directory, steps):
    """LDMPipeline's loop (which draws its own x_T) from a given x_T."""
    def run(dtype, x):
        pipe = LDMPipeline.from_pretrained(directory, torch_dtype=torch.float32).to(dtype)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(steps)
        latents = x * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps:
                output = pipe.unet(scheduler.scale_model_input(latents, t), t).sample
                latents = scheduler.step(output, t, latents, eta=0.0).prev_sample
            return pipe.vqvae.decode(latents / pipe.vqvae.config.scaling_factor).sample
    return run


def sd_pipeline(directory, generator, vocab, merges, pad, text_act, text_hidden, unet_options, vae_options, scheduler,
                variant=None):
    tokenizer = save_tokenizer(directory / "tokenizer", vocab, merges, pad)
    text = text_encoder(text_hidden, 2, 4, text_act, len(vocab), generator)
    unet = UNet2DConditionModel(**{"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                                   "norm_num_groups": 8, "cross_attention_dim": text_hidden, **unet_options}).eval()
    vae = AutoencoderKL(**{"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [16, 32],
                           "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                           "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 16, **vae_options}).eval()
    for model in (unet, vae):
        perturb(model, generator)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if variant:
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(directory, variant=variant, safe_serialization=True)
    # tokenizer/ as SD publishes it: vocab.json and merges.txt, no tokenizer.json
    shutil.rmtree(directory / "tokenizer")
    return save_tokenizer(directory / "tokenizer", vocab, merges, pad)


def main():
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1234)
    corpus = prompts()
    vocab, merges = train_vocabulary(corpus * 3, 600)

    sd1 = OUT / "sd1-tiny"
    sd1_scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                                  steps_offset=1, set_alpha_to_one=False)
    tok1 = sd_pipeline(sd1, generator, vocab, merges, "<|endoftext|>", "quick_gelu", 32,
                       {"block_out_channels": [16, 32], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 8},
                       {}, sd1_scheduler)
    sd2 = OUT / "sd2-tiny"
    sd2_scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    tok2 = sd_pipeline(sd2, generator, vocab, merges, "!", "gelu", 48,
                       {"block_out_channels": [16, 32], "down_block_types": ["CrossAttnDownBlock2D"] * 2,
                        "up_block_types": ["CrossAttnUpBlock2D"] * 2, "attention_head_dim": [2, 4],
                        "use_linear_projection": True, "upcast_attention": True},
                       {"use_quant_conv": False, "use_post_quant_conv": False, "scaling_factor": 0.13025},
                       sd2_scheduler, variant="fp16")

    tokenizer_cases = []
    for prompt in corpus:
        ids1 = tok1(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        ids2 = tok2(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        tokenizer_cases.append({"prompt": prompt, "sd1": ids1, "sd2": ids2})
    (OUT / "tokenizer-cases.json").write_text(json.dumps(
        {"made_with": MADE_WITH, "tokenizer": "transformers.CLIPTokenizer, padding=max_length, max_length=77, truncation",
         "cases": tokenizer_cases}, ensure_ascii=False, indent=0) + "\n")

    ldm = OUT / "ldm-tiny"
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=[16, 32],
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                    layers_per_block=1, norm_num_groups=8, num_vq_embeddings=32, vq_embed_dim=3, sample_size=16).eval()
    ldm_unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
                           down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                           attention_head_dim=8, norm_num_groups=8).eval()
    for model in (vqvae, ldm_unet):
        perturb(model, generator)
    LDMPipeline(vqvae=vqvae.to(torch.bfloat16), unet=ldm_unet.to(torch.bfloat16),
                scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                                        clip_sample=False)).save_pretrained(ldm, safe_serialization=True)

    for directory, tokenizer, vq in [(sd1, tok1, False), (sd2, tok2, False), (ldm, None, True)]:
        summary = {}
        latent_shape = (3, 8, 8) if vq else (4, 8, 8)
        component_cases(directory, None, generator, tokenizer, summary, latent_shape, (3, 16, 16), vq=vq)
        if directory == sd1:
            x = torch.randn(2, 4, 8, 8, generator=generator)
            render_case(directory, summary, "render-cfg", x,
                        sd_render(directory, None, ["a photo of an ankle boot", "a black and white picture of a trouser"],
                                  ["blurry", ""], 8, 7.5),
                        {"model": "sd1-tiny", "steps": 8, "count": 2, "seed": [1, 2],
                         "prompt": ["a photo of an ankle boot", "a black and white picture of a trouser"],
                         "negative_prompt": ["blurry", ""]})
        elif directory == sd2:
            x = torch.randn(2, 4, 8, 8, generator=generator)
            render_case(directory, summary, "render-cfg", x,
                        sd_render(directory, "fp16", ["Boots, on a shelf!"] * 2, ["low quality"] * 2, 6, 5.0),
                        {"model": "sd2-tiny", "steps": 6, "count": 2, "seed": [3, 4], "prompt": "Boots, on a shelf!",
                         "negative_prompt": "low quality", "guidance": {"kind": "cfg", "scale": 5.0}})
        if directory != ldm:
            init_image(directory, generator)
        if directory == sd2:
            render_case(directory, summary, "img2img-ddim", torch.randn(2, 4, 8, 8, generator=generator),
                        img2img_render(directory, "fp16", None, ["a bag", "a red bag"], ["", "blurry"], 10, 5.0, 0.6, [7, 8]),
                        {"model": "sd2-tiny", "steps": 10, "count": 2, "seed": [7, 8], "prompt": ["a bag", "a red bag"],
                         "negative_prompt": ["", "blurry"], "guidance": {"kind": "cfg", "scale": 5.0},
                         "init_image": "init.png", "strength": 0.6})
        if directory == sd1:
            for name, kind, sampler, strength in [("img2img-euler", EulerDiscreteScheduler, "euler", 0.75),
                                                  ("img2img-dpm", DPMSolverMultistepScheduler, "dpmsolver++", 0.5)]:
                render_case(directory, summary, name, torch.randn(2, 4, 8, 8, generator=generator),
                            img2img_render(directory, None, kind, ["boots"] * 2, [""] * 2, 8, 7.5, strength, [9, 10]),
                            {"model": "sd1-tiny", "steps": 8, "count": 2, "seed": [9, 10], "prompt": "boots",
                             "sampler": sampler, "init_image": "init.png", "strength": strength})
        if directory == ldm:
            x = torch.randn(2, 3, 8, 8, generator=generator)
            render_case(directory, summary, "render", x, ldm_render(directory, 6),
                        {"model": "ldm-tiny", "steps": 6, "count": 2, "seed": [5, 6]})
        (directory / "cases.json").write_text(json.dumps({"made_with": MADE_WITH, "cases": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
