"""Train the etemlive U-Net on our simulator only, deterministically from a seed.

Data: ``etemlive.sources.simulate.render_training_sample(rng, size_px)`` scenes
(diameters 1-100 nm, pixel sizes 0.05-2 nm/px, low to high dose, bright and dark
field, textures, drift blur, faceted and round shapes, dense and sparse). Sample i
is drawn from ``np.random.default_rng([seed, i])``, so the data set does not depend
on the number of worker processes. A pool of ``--samples`` scenes is rendered up
front (multiprocessing) and the training steps draw batches from it with fresh
augmentation each time (dihedral flips / rot90, gamma, extra Gaussian noise), on
the training device.

Loss: 0.5 soft-Dice + 0.5 BCE on the particle map + BCE on the normalized-distance
map (:func:`etemlive.segment.unet.segmentation_loss`).

Examples
--------
Shipped model (GPU)::

    python tools/train_unet.py --device cuda --steps 6000 --batch 32 --samples 20000 \
        --workers 16 --out engines/unet.pt --log engines/train_log.json

Few deterministic steps on a CPU (the reproducibility test)::

    python tools/train_unet.py --device cpu --steps 3 --batch 2 --tile 64 --samples 4 --workers 1 \
        --out /tmp/u.pt
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from etemlive.segment.instances import maps_to_instances, training_targets  # noqa: E402

EVAL_SEED_OFFSET = 1_000_000  # held-out samples use indices >= this
SAMPLER = "mix"  # set from --sampler (module level so forked workers see it)
#: Re-weighting of the training scenes (set from the command line; module level so forked
#: workers see it). All zero / False = the stage-1 data set, sample for sample.
RECIPE: dict = {"low_dose_fraction": 0.0, "faceted_fraction": 0.0, "nucleation": False,
                "blurry_fraction": 0.0, "blur_max_px": 4.0, "small_fraction": 0.0}


def scene_from_movie_simulator(rng: np.random.Generator, size_px: int = 256,
                               blur_sigma_px: float | None = None):
    """One random scene from ``simulate()`` with randomized settings (image, labels, params).

    Used when the simulator has no ``render_training_sample``: draws a scenario,
    a diameter log-uniform in 1-100 nm and a pixel size (0.05-2 nm/px) that puts it
    at 5-60 px, a dose log-uniform in 3-2000 e-/px, polarity, blur, drift, carbon
    texture, illumination gradient; renders 1-4 frames and keeps the last (necks,
    motion). A setting the simulator refuses is redrawn (same rng: deterministic).
    ``blur_sigma_px`` replaces the drawn detector blur (the draw still happens, so the
    other settings do not change).
    """
    from etemlive.sources import simulate as sim

    # nucleation (tiny particles appearing over a movie) only with --nucleation: it needs
    # several frames before anything is visible, so it gets 4-8 frames then.
    scenarios = [s for s in sim.SCENARIOS if s != "nucleation" or RECIPE["nucleation"]]
    for _ in range(20):
        d_nm = float(np.exp(rng.uniform(np.log(1.0), np.log(100.0))))
        d_px = float(np.exp(rng.uniform(np.log(5.0), np.log(60.0))))
        px_nm = float(np.clip(d_nm / d_px, 0.05, 2.0))
        params = {
            "scenario": str(rng.choice(scenarios)), "seed": int(rng.integers(2**31)),
            "n_frames": int(rng.integers(1, 5)), "size_px": int(size_px), "pixel_size_nm": px_nm,
            "mean_diameter_nm": d_nm, "dose_e_per_px": float(np.exp(rng.uniform(np.log(3), np.log(2000)))),
            "bright_field": bool(rng.random() < 0.5), "blur_sigma_px": float(rng.uniform(0.3, 1.6)),
            "drift_px_per_frame": float(rng.uniform(0.0, 1.0)),
            "carbon_texture_nm": float(rng.uniform(0.3, 3.0)),
            "illumination_gradient": float(rng.uniform(0.0, 0.3)),
        }
        if blur_sigma_px is not None:
            params["blur_sigma_px"] = float(blur_sigma_px)
        if params["scenario"] == "nucleation":
            params["n_frames"] = int(rng.integers(4, 9))
            params["mean_diameter_nm"] = float(np.clip(d_nm, 1.0, 4.0))
            params["pixel_size_nm"] = float(np.clip(params["mean_diameter_nm"] / d_px, 0.05, 0.6))
        try:
            frames = list(sim.simulate(sim.SimulationConfig(**params)))  # <= 4 small frames
            frame = frames[-1] if frames else None
        except Exception:  # a combination the simulator refuses or cannot render: draw again
            continue
        if frame is not None:
            return frame.image.astype(np.float32), frame.labels, params
    raise RuntimeError("the simulator refused 20 random settings in a row")


def render_sample(seed: int, index: int, tile_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``index`` of the data set: (raw image f32, fg u8, dist f16, labels u16)."""
    from etemlive.sources import simulate as sim

    # even samples: the simulator's training-scene sampler (broad: 1-100 nm, 0.05-2 nm/px,
    # 3-3000 e-/px, shapes, necks, liquid); odd samples: frames of its movie scenarios
    # with randomized settings (what the analysis sees). Falls back to the latter alone.
    render = getattr(sim, "render_training_sample", None)
    if render is None or SAMPLER == "movie" or (SAMPLER == "mix" and index % 2):
        render = scene_from_movie_simulator
    rng = np.random.default_rng([seed, index])
    overrides: dict = {}
    if RECIPE["blurry_fraction"] > 0:
        # blurrier than the detector PSF default (real frames' edges often fall off over
        # +-5 px: defocus, oversampling); own stream, so other samples do not change
        u_blur, u_blur_val = np.random.default_rng([seed, index, 11]).random(2)
        if u_blur < RECIPE["blurry_fraction"]:
            overrides["blur_sigma_px"] = float(2.0 + u_blur_val * (RECIPE["blur_max_px"] - 2.0))
    if render is not scene_from_movie_simulator:
        # recipe re-weighting from its own stream, so the default recipe is the stage-1 data
        extra = np.random.default_rng([seed, index, 7])
        u_dose, u_dose_val, u_solid, u_solid_val = extra.random(4)
        if u_dose < RECIPE["low_dose_fraction"]:  # 3-30 e-/px, log-uniform
            overrides["dose_e_per_px"] = float(np.exp(np.log(3.0) + u_dose_val * np.log(10.0)))
        if u_solid < RECIPE["faceted_fraction"]:
            overrides["solids"] = ("faceted", "rods", "mixed")[int(u_solid_val * 3)]
        if RECIPE["small_fraction"] > 0:
            # small particles, 4-8 px across (the sampler's usual mean is 4 px to a fifth
            # of the tile, log-uniform: few scenes of nuclei a few px wide), at >= 0.25
            # nm/px so that they are >= 1 nm; own stream, so other samples do not change
            u_small, u_px, u_d = np.random.default_rng([seed, index, 13]).random(3)
            if u_small < RECIPE["small_fraction"]:
                px_nm = float(np.exp(np.log(0.25) + u_px * np.log(8.0)))  # 0.25-2 nm/px
                overrides["pixel_size_nm"] = px_nm
                overrides["mean_diameter_nm"] = max(1.0, px_nm * float(np.exp(np.log(4.0) + u_d * np.log(2.0))))
    image, labels, _params = render(rng, size_px=tile_px, **overrides)
    image = np.asarray(image, np.float32)
    if image.shape != (tile_px, tile_px):
        raise ValueError(f"simulator returned shape {image.shape}, expected {(tile_px, tile_px)}")
    fg, dist = training_targets(labels)
    return image, fg.astype(np.uint8), dist.astype(np.float16), np.asarray(labels, np.uint16)


def _render_star(args: tuple[int, int, int]):
    return render_sample(*args)


def render_pool(seed: int, indices: range, tile_px: int, workers: int):
    """Render samples ``indices`` (in order) with ``workers`` processes."""
    jobs = [(seed, i, tile_px) for i in indices]
    if workers <= 1:
        out = [render_sample(*j) for j in jobs]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            out = pool.map(_render_star, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    img = np.stack([o[0] for o in out])[:, None]
    fg = np.stack([o[1] for o in out])[:, None]
    dist = np.stack([o[2] for o in out])[:, None]
    labels = np.stack([o[3] for o in out])
    return img, fg, dist, labels


def augment(torch, x, fg, dist, gen, gen_dev=None, *, train: bool = True, texture: float = 0.0,
            grain_max_px: float = 2.5, polarity_bin: int = 1):
    """Dihedral transform, gamma, normalization (as normalize_frame) and noise, on x's device.

    x: (B,1,T,T) float32 raw counts; fg, dist: float32 targets. Returns (xn, fg, dist).
    ``polarity_bin``: the polarity is decided from the tails of a copy area-averaged
    ``polarity_bin`` x ``polarity_bin`` (1: raw pixels, stages 1-2). Inference uses the
    skewness rule of ``backends.dark_field_polarity`` (see docs/model.md).
    """
    b = x.shape[0]
    dev = x.device
    if train:
        ks = torch.randint(0, 4, (b,), generator=gen).tolist()
        flips = torch.randint(0, 2, (b,), generator=gen).tolist()
        xs, fs, ds = [], [], []
        for i in range(b):  # B is small (<= 64): a Python loop over samples, not pixels
            xi, fi, di = x[i], fg[i], dist[i]
            if ks[i]:
                xi, fi, di = (torch.rot90(t, ks[i], dims=(1, 2)) for t in (xi, fi, di))
            if flips[i]:
                xi, fi, di = (torch.flip(t, dims=(2,)) for t in (xi, fi, di))
            xs.append(xi)
            fs.append(fi)
            ds.append(di)
        x, fg, dist = torch.stack(xs), torch.stack(fs), torch.stack(ds)
        # gamma on the raw (positive) counts, scaled by each sample's max
        gamma = torch.exp((torch.rand(b, generator=gen) - 0.5) * 0.8).to(dev).view(b, 1, 1, 1)
        xmin = x.amin(dim=(1, 2, 3), keepdim=True)
        span = (x.amax(dim=(1, 2, 3), keepdim=True) - xmin).clamp_min(1e-6)
        x = ((x - xmin) / span).clamp_min(0) ** gamma
    flat = x.reshape(b, -1)
    q = torch.quantile(flat, torch.tensor([0.005, 0.5, 0.995], device=dev, dtype=flat.dtype), dim=1)
    lo, med, hi = (q[i].view(b, 1, 1, 1) for i in range(3))
    span = (hi - lo).clamp_min(1e-6)
    # as normalize_frame: canonical bright-field polarity (dark field inverted), decided on
    # an area-averaged copy when polarity_bin > 1 (shot noise's own bright tail averaged out)
    if polarity_bin > 1:
        xb = torch.nn.functional.avg_pool2d(x, polarity_bin).reshape(b, -1)
        qb = torch.quantile(xb, torch.tensor([0.005, 0.5, 0.995], device=dev, dtype=xb.dtype), dim=1)
        bright = (qb[2] - qb[1] > qb[1] - qb[0]).view(b, 1, 1, 1)
    else:
        bright = hi - med > med - lo
    xn = torch.where(bright, (hi - x) / span, (x - lo) / span)
    if train:
        sigma = (torch.rand(b, generator=gen) * 0.08 * (torch.rand(b, generator=gen) < 0.5)).to(dev)
        noise = torch.randn(x.shape, generator=gen_dev, device=dev)
        xn = xn + noise * sigma.view(b, 1, 1, 1)
        if texture > 0:
            # Grainy background texture of either sign, 0.6-grain_max_px px grains, over the whole
            # frame: real carbon films are grainier than the simulated ones, and a network
            # that never saw such grains calls the bright ones dark-field particles.
            amp = torch.rand(b, generator=gen) * texture * (torch.rand(b, generator=gen) < 0.5)
            grain_px = float(torch.empty(1).uniform_(0.6, grain_max_px, generator=gen))
            tex = gaussian_blur(torch, torch.randn(x.shape, generator=gen_dev, device=dev), grain_px)
            tex = tex / tex.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            xn = xn + tex * amp.to(dev).view(b, 1, 1, 1)
    return xn.clamp(-0.5, 1.5), fg, dist


def gaussian_blur(torch, x, sigma_px: float):
    """Separable Gaussian blur of (B,1,H,W) with reflect padding."""
    r = max(1, int(3 * sigma_px + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma_px) ** 2)
    k = k / k.sum()
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))


def f1_score_simple(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """(matched, n_pred, n_true) at IoU >= threshold (one-to-one is implied for IoU > 0.5)."""
    t = true.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    inter = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p)
    at, ap = np.bincount(t, minlength=n_t), np.bincount(p, minlength=n_p)
    iou = inter / np.maximum(at[:, None] + ap[None, :] - inter, 1)
    iou[0, :] = 0
    iou[:, 0] = 0
    matched = int((iou > iou_threshold).sum())
    return matched, int((ap[1:] > 0).sum()), int((at[1:] > 0).sum())


def train(args: argparse.Namespace) -> dict:
    import torch

    global SAMPLER
    SAMPLER = args.sampler
    RECIPE.update(low_dose_fraction=args.low_dose_fraction, faceted_fraction=args.faceted_fraction,
                  nucleation=args.nucleation, blurry_fraction=args.blurry_fraction,
                  blur_max_px=args.blur_max_px, small_fraction=args.small_fraction)

    from etemlive.segment.unet import (
        UNet,
        UNetConfig,
        count_parameters,
        save_weights,
        segmentation_loss,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    img, fg, dist, _ = render_pool(args.seed, range(args.samples), args.tile, args.workers)
    t_data = time.perf_counter() - t0
    print(f"rendered {args.samples} samples of {args.tile}^2 in {t_data:.1f} s", flush=True)
    X = torch.from_numpy(img).to(device)
    FG = torch.from_numpy(fg).to(device)
    DI = torch.from_numpy(dist).to(device)

    model = UNet(UNetConfig(base_channels=args.base_channels, levels=args.levels))
    if args.init:  # fine-tune from earlier weights (their config wins)
        from etemlive.segment.unet import load_unet

        model, _ = load_unet(args.init)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warm = max(1, min(200, args.steps // 20))

    def lr_at(step: int, elapsed_s: float = 0.0) -> float:
        # Linear warm-up then cosine decay to 2 %; with --max-minutes the decay follows
        # whichever runs out first, steps or time, so a time-capped run still anneals.
        if step < warm:
            return args.lr * (step + 1) / warm
        p = (step - warm) / max(1, args.steps - warm)
        if args.max_minutes:
            p = max(p, elapsed_s / (60 * args.max_minutes))
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    gen = torch.Generator().manual_seed(args.seed)
    gen_dev = torch.Generator(device=device).manual_seed(args.seed + 1)
    curve: list[dict] = []
    use_amp = device.type == "cuda"
    t_train = time.perf_counter()
    step = 0
    for step in range(args.steps):
        elapsed = time.perf_counter() - t_train
        if args.max_minutes and elapsed > 60 * args.max_minutes:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            step -= 1
            break
        lr = lr_at(step, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, args.samples, (args.batch,), generator=gen).to(device)
        xb, fb, db = augment(torch, X[idx], FG[idx].float(), DI[idx].float(), gen, gen_dev, texture=args.texture,
                             grain_max_px=args.grain_max_px, polarity_bin=args.polarity_bin)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(xb)
        loss, parts = segmentation_loss(logits, fb, db)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step < 20 or step % args.log_every == 0 or step == args.steps - 1:
            rec = {"step": step, "loss": float(loss.detach()), **parts, "lr": lr,
                   "t_s": round(time.perf_counter() - t_train, 2)}
            curve.append(rec)
            if step % args.log_every == 0:
                print(json.dumps(rec), flush=True)
        if args.save_every and step and step % args.save_every == 0:
            # an interim copy to evaluate while a long CPU run goes on (same format, meta says so)
            save_weights(model, Path(args.out).with_suffix(".partial.pt"),
                         meta={"partial_step": step, "init": args.init})
    steps_done = step + 1
    train_s = time.perf_counter() - t_train

    ev = evaluate(torch, model, args, device) if args.eval_samples else {}
    meta = {
        "seed": args.seed, "steps": steps_done, "batch": args.batch, "tile_px": args.tile,
        "samples": args.samples, "lr": args.lr, "texture": args.texture, "init": args.init,
        "sampler": args.sampler, "grain_max_px": args.grain_max_px,
        "low_dose_fraction": args.low_dose_fraction, "faceted_fraction": args.faceted_fraction,
        "nucleation": args.nucleation, "polarity_bin": args.polarity_bin, "threads": args.threads,
        "blurry_fraction": args.blurry_fraction, "blur_max_px": args.blur_max_px,
        "small_fraction": args.small_fraction,
        "device": _device_name(torch, device),
        "train_s": round(train_s, 1), "render_s": round(t_data, 1),
        "parameters": count_parameters(model), "torch": str(torch.__version__),
        "python": platform.python_version(), "eval": ev,
        "command": " ".join(["python", "tools/train_unet.py", *sys.argv[1:]]),
    }
    model = model.to(memory_format=torch.contiguous_format).cpu()
    save_weights(model, args.out, meta=meta)
    log = {"meta": meta, "curve": curve}
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.log).write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in meta.items() if k != "command"}), flush=True)
    return log


def _device_name(torch, device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def evaluate(torch, model, args, device) -> dict:
    """Held-out loss and instance F1 on samples the training never saw."""
    from etemlive.segment.unet import segmentation_loss

    img, fg, dist, labels = render_pool(
        args.seed, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + args.eval_samples), args.tile, args.workers
    )
    model.eval()
    losses, m_sum, p_sum, t_sum = [], 0, 0, 0
    with torch.inference_mode():
        for b0 in range(0, len(img), 32):
            x = torch.from_numpy(img[b0 : b0 + 32]).to(device)
            f = torch.from_numpy(fg[b0 : b0 + 32]).to(device).float()
            d = torch.from_numpy(dist[b0 : b0 + 32]).to(device).float()
            xn, f, d = augment(torch, x, f, d, None, None, train=False, polarity_bin=args.polarity_bin)
            logits = model(xn).float()
            loss, _ = segmentation_loss(logits, f, d)
            losses.append(float(loss))
            prob = torch.sigmoid(logits).cpu().numpy()
            for j in range(prob.shape[0]):
                pred = maps_to_instances(prob[j, 0], prob[j, 1])
                m, p, t = f1_score_simple(pred, labels[b0 + j])
                m_sum, p_sum, t_sum = m_sum + m, p_sum + p, t_sum + t
    f1 = 2 * m_sum / max(p_sum + t_sum, 1)
    return {"samples": int(len(img)), "loss": float(np.mean(losses)), "f1_iou50": round(f1, 4),
            "n_true": t_sum, "n_pred": p_sum, "n_matched": m_sum}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tile", type=int, default=256, help="training tile side (px, multiple of 16)")
    p.add_argument("--samples", type=int, default=20000, help="rendered scenes in the pool")
    p.add_argument("--eval-samples", type=int, default=0, help="held-out scenes for the final eval")
    p.add_argument("--workers", type=int, default=1, help="rendering processes")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--levels", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--texture", type=float, default=0.3,
                   help="max amplitude of the grainy-texture augmentation (normalized units; 0 = off)")
    p.add_argument("--sampler", choices=("mix", "training", "movie"), default="mix",
                   help="scenes: render_training_sample, simulate() movie frames, or both alternating")
    p.add_argument("--grain-max-px", type=float, default=2.5,
                   help="largest grain (Gaussian sigma, px) of the texture augmentation")
    p.add_argument("--low-dose-fraction", type=float, default=0.0,
                   help="share of render_training_sample scenes forced to 3-30 e-/px")
    p.add_argument("--faceted-fraction", type=float, default=0.0,
                   help="share of render_training_sample scenes forced to faceted / rods / mixed solids")
    p.add_argument("--blurry-fraction", type=float, default=0.0,
                   help="share of scenes (both samplers) given a detector blur drawn in "
                        "2..--blur-max-px px instead of the simulator's usual 0-2 px")
    p.add_argument("--blur-max-px", type=float, default=4.0,
                   help="largest detector blur (Gaussian sigma, px) of the blurry scenes")
    p.add_argument("--small-fraction", type=float, default=0.0,
                   help="share of render_training_sample scenes whose particles are 4-8 px across")
    p.add_argument("--nucleation", action="store_true",
                   help="also draw movie frames of the nucleation scenario (tiny particles)")
    p.add_argument("--polarity-bin", type=int, default=1, choices=(1, 2, 4),
                   help="decide the canonical polarity from the 0.5/99.5 %% tails of a copy "
                        "area-averaged this many times (1: raw pixels, the stage 1-2 rule, right "
                        "on 72 %% of the stage-2 training tiles; 4: right on 89 %%)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--init", default="", help="start from these weights (fine-tuning)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after this training time (0 = off)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=0,
                   help="also write <out>.partial.pt every this many steps (0 = off)")
    p.add_argument("--out", default=str(ROOT / "engines" / "unet.pt"))
    p.add_argument("--log", default="", help="write the loss curve and metadata (json) here")
    args = p.parse_args(argv)
    if args.tile % 16:
        p.error("--tile must be a multiple of 16")
    if args.samples < 1 or args.batch < 1 or args.steps < 1:
        p.error("--samples, --batch and --steps must be >= 1")
    if not 0.0 <= args.small_fraction <= 1.0:
        p.error("--small-fraction must be in [0, 1]")
    if not 0.0 <= args.blurry_fraction <= 1.0 or args.blur_max_px < 2.0:
        p.error("--blurry-fraction must be in [0, 1] and --blur-max-px >= 2 (px)")
    return args


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
