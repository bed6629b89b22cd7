"""Population training throughput: one compiled population step against a Python loop over its members.

Run: ``python bench/population.py --quick`` (fewer timing rounds; under 10
minutes on 2 cores) or ``python bench/population.py``. ``--models`` picks
models, ``--seed`` the seed. The last line printed is one JSON object:
``{"bench": "population", "env", "results", "targets"}``.

Grid: two MLPs (plain ``jnp`` functions with relu, params a dict, softmax
cross-entropy from :func:`hamjax.distill.cross_entropy`), the 8x8-digits
64-128-10 and an MNIST-sized 784-300-100-10; batch 32 and 128; population
``P`` = 1, 8, 32, 128. Data is synthetic (normal inputs, random labels of 10
classes); every call runs ``STEPS`` = 50 adamw steps (learning rate 1e-3,
no weight decay) for every member. Variants at each grid point:

* ``loop``: a Python loop over the members, each step one call of a
  ``jax.jit``-compiled single-member train step (params and optimizer state
  donated), ``P * 50`` dispatches per call;
* ``loop+scan``: the same loop, each member's 50 steps in one jitted call
  under ``lax.scan`` (``P`` dispatches): it separates the saving from fewer
  dispatches from the saving from batching members;
* :class:`hamjax.search.population.Population` executions ``vmap``,
  ``chunked8`` and ``chunked32`` (``lax.map`` with that many members at a
  time, only where the chunk is smaller than ``P``) and ``sequential``;
* ``auto``: what ``Population(execution="auto").choose`` picks on the same
  shapes, with its own timings.

Throughput is member-steps per second, ``P * 50 / seconds`` per call.
``best`` is the fastest population execution; ratios (``best / loop``,
``best / loop+scan``) are taken within one grid point.

Timing, in rounds of one call per variant (``jax.block_until_ready`` on
everything the call returns); a variant's time is the median over its
rounds. The machine is noisy, so the variants of a grid point take turns:
the first round runs ``loop``, ``loop+scan`` (both compiled on one member
beforehand), then ``choose``, then ``chunked32``; later rounds rotate the
order. ``choose`` compiles ``vmap``, ``chunked`` (chunk 8) and
``sequential``, runs each once to warm it and times the next call(s)
(``--quick``: one; default: median of three): those timings are the
first-round times of the three variants, whose later rounds go through the
same ``auto`` trainer with ``chosen`` set, so they reuse its executables.
``chunked32`` has its own trainer, warmed with one call. No executable is
compiled or warmed twice: the 784-300-100-10 MLP at P=128 and batch 128
takes 15 to 20 s a call on 2 cores, and a second warm-up per execution
would not fit ``--quick`` in 10 minutes. Rounds are added while the timed
seconds of the grid point stay within a budget (``--quick``: 1 to 5
rounds within 10 s, so one round at the large points; default: 3 to 9
rounds within 60 s).

FLOPs: an MLP training step is counted as ``6 * batch * sum(in * out)``
over its dense layers (forward ``2 * batch * in * out`` per layer,
backward twice that for the input and weight gradients); biases, relu,
the softmax and the optimizer update (``O(params)``, not
``O(batch * params)``) are left out. Achieved GFLOP/s of a variant is
member-steps/s times that count. The ceiling is this machine's float32
matmul rate in the same run: jitted ``n x n @ n x n`` for n = 1024 and
2048, median time, ``2 n^3 / s``, measured at the start and at the end,
the higher kept.

Before timing, one check per model that the loop and the population run
the same math: ``P = 2`` members, their losses over 50 steps from
``loop+scan`` against ``Population(execution="vmap")``.

Targets: best population / ``loop`` throughput for the digits MLP at
P=128 (the lower of batch 32 and 128) ``>= 5``; the lowest best / ``loop``
over the whole grid ``>= 1.0``. On a GPU backend the grid adds P=1024 and
the target "GPU: population / loop at P=1024" (lowest best / ``loop`` over
models and batches at P=1024, ``>= 50``); on CPU that target is omitted.

``bound`` per grid point is ``ceiling / loop GFLOP/s``: the ratio a
population would reach if it ran at the matmul ceiling, an upper bound on
``best / loop`` (reached only by a program with no overhead beyond large
matmuls). Where it is below a target, that target cannot be met on this
machine by any execution.
"""

# The NAS target (evolutionary search, 20 generations of 32, on the MNIST subset) is bench/nas.py's.

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import measure
from hamjax.distill import cross_entropy
from hamjax.search import population as pop

MODELS = {"digits": (64, 128, 10), "mnist": (784, 300, 100, 10)}
BATCHES = (32, 128)
POPULATIONS = (1, 8, 32, 128)
GPU_POPULATION = 1024
STEPS = 50
CHUNKS = (8, 32)
LEARNING_RATE = 1e-3
CLASSES = 10
EXECUTIONS = ("vmap", "chunked8", "chunked32", "sequential")


# models ---------------------------------------------------------------------------------------
def mlp_params(sizes: tuple[int, ...], key: jax.Array) -> dict:
    """He-normal weights and zero biases of a dense MLP with layer widths ``sizes``."""
    keys = jax.random.split(key, len(sizes) - 1)
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = jax.random.normal(keys[i], (n_in, n_out)) * np.float32(np.sqrt(2.0 / n_in))
        params[f"b{i}"] = jnp.zeros((n_out,))
    return params


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    """Logits of the MLP: dense layers with relu between them."""
    layers = len(params) // 2
    for i in range(layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            x = jax.nn.relu(x)
    return x


def step_flops(sizes: tuple[int, ...], batch: int) -> int:
    """FLOPs of one training step, ``6 * batch * sum(in * out)`` (see the module docstring)."""
    return 6 * batch * sum(a * b for a, b in itertools.pairwise(sizes))


def synthetic_batches(sizes: tuple[int, ...], batch: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """``(STEPS, batch, in)`` normal inputs and ``(STEPS, batch)`` labels in ``[0, CLASSES)``."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((STEPS, batch, sizes[0]), dtype=np.float32)
    ys = rng.integers(0, CLASSES, (STEPS, batch)).astype(np.int32)
    return jnp.asarray(xs), jnp.asarray(ys)


# the loop baselines ---------------------------------------------------------------------------
def loop_functions():
    """``(optimizer, step, scan)``: one member's jitted train step, and its ``STEPS`` steps under ``lax.scan``."""
    optimizer = optax.adamw(LEARNING_RATE, weight_decay=0.0)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(mlp_apply(p, x), y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def scan(params, opt_state, xs, ys):
        def body(carry, batch):
            params, opt_state, loss = step(*carry, *batch)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, losses

    return optimizer, jax.jit(step, donate_argnums=(0, 1)), jax.jit(scan, donate_argnums=(0, 1))


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def loop_runners(params, xs, ys) -> dict:
    """The ``loop`` and ``loop+scan`` runners over the members of ``params``, compiled on member 0."""
    optimizer, step, scan = loop_functions()
    p = pop.size(params)
    x_list, y_list = list(xs), list(ys)
    first = pop.member(params, 0)
    jax.block_until_ready(step(_copy(first), optimizer.init(first), x_list[0], y_list[0]))
    jax.block_until_ready(scan(_copy(first), optimizer.init(first), xs, ys))

    def members():
        out = [_copy(pop.member(params, i)) for i in range(p)]
        return out, [optimizer.init(m) for m in out]

    stepped, scanned = members(), members()

    def run_loop():
        prms, states = stepped
        for i in range(p):
            prm, state = prms[i], states[i]
            for x, y in zip(x_list, y_list, strict=True):
                prm, state, _ = step(prm, state, x, y)
            prms[i], states[i] = prm, state
        return prms, states

    def run_scan():
        prms, states = scanned
        for i in range(p):
            prms[i], states[i], _ = scan(prms[i], states[i], xs, ys)
        return prms, states

    return {"loop": run_loop, "loop+scan": run_scan}


# the population -------------------------------------------------------------------------------
def population_trainers(params, xs, ys, choose_repeats: int) -> tuple[dict, dict, dict]:
    """Runners for the population executions that apply at this ``P``, ``choose``'s result, and first-round seconds.

    ``choose`` compiles, warms and times ``vmap``, ``chunked`` (chunk 8) and
    ``sequential``; its timings are their first-round seconds, and their
    runners go through the same ``auto`` trainer with ``chosen`` set, so
    they reuse its executables. ``chunked32`` has its own trainer, warmed
    with one call and timed with the next.
    """
    p = pop.size(params)
    hparams = {"learning_rate": jnp.full((p,), LEARNING_RATE)}
    auto = pop.Population(mlp_apply, execution="auto", chunk=CHUNKS[0])
    picked = auto.choose(auto.init(params, hparams), xs, ys, repeats=choose_repeats)
    choice = {"chosen": picked, "seconds_per_call": dict(auto.timings)}
    holders = {}

    def runner(name, trainer, execution=None):
        holders[name] = trainer.init(params, hparams)

        def run():
            if execution is not None:
                # "auto" trains with ``chosen``: the executable choose compiled for ``execution``
                trainer.chosen = execution
            holders[name], losses = trainer.train(holders[name], xs, ys)
            return holders[name], losses

        return run

    runners = {"vmap": runner("vmap", auto, "vmap")}
    first = {"vmap": auto.timings["vmap"]}
    if CHUNKS[0] < p:
        runners[f"chunked{CHUNKS[0]}"] = runner(f"chunked{CHUNKS[0]}", auto, "chunked")
        first[f"chunked{CHUNKS[0]}"] = auto.timings["chunked"]
    if CHUNKS[1] < p:
        wide = pop.Population(mlp_apply, execution="chunked", chunk=CHUNKS[1])
        runners[f"chunked{CHUNKS[1]}"] = runner(f"chunked{CHUNKS[1]}", wide)
        _seconds(runners[f"chunked{CHUNKS[1]}"])
        first[f"chunked{CHUNKS[1]}"] = _seconds(runners[f"chunked{CHUNKS[1]}"])
    runners["sequential"] = runner("sequential", auto, "sequential")
    first["sequential"] = auto.timings["sequential"]
    return runners, choice, first


# timing ---------------------------------------------------------------------------------------
def _seconds(run) -> float:
    started = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - started


def interleaved_seconds(runners: dict, seconds: dict, min_rounds: int, max_rounds: int, budget_s: float) -> dict:
    """Add rounds of one timed call per runner to ``seconds``; runner order rotates from round to round.

    ``seconds`` holds each runner's earlier rounds (the same count for
    all). Rounds are added until ``max_rounds`` in all, or, past
    ``min_rounds``, until another round as long as the longest so far
    would take the timed seconds over ``budget_s``.
    """
    names = list(runners)
    done = len(seconds[names[0]])
    spent = sum(sum(s) for s in seconds.values())
    longest = max((sum(s[k] for s in seconds.values()) for k in range(done)), default=0.0)
    while done < max_rounds and (done < min_rounds or spent + longest <= budget_s):
        took = 0.0
        for name in names[done % len(names) :] + names[: done % len(names)]:
            seconds[name].append(_seconds(runners[name]))
            took += seconds[name][-1]
        spent, longest, done = spent + took, max(longest, took), done + 1
    return seconds


def matmul_ceiling(repeats: int) -> dict:
    """float32 GFLOP/s of a jitted square matmul, ``{n: 2 n^3 / median seconds / 1e9}`` for n = 1024, 2048."""
    out = {}
    matmul = jax.jit(jnp.matmul)
    for n in (1024, 2048):
        a = jax.random.normal(jax.random.key(0), (n, n))
        b = jax.random.normal(jax.random.key(1), (n, n))
        jax.block_until_ready(matmul(a, b))
        seconds = statistics.median(_seconds(lambda a=a, b=b: matmul(a, b)) for _ in range(repeats))
        out[n] = 2 * n**3 / seconds / 1e9
    return out


def same_math_check(sizes: tuple[int, ...], seed: int) -> float:
    """Largest |loss difference| over 50 steps of 2 members: ``loop+scan`` against population ``vmap``."""
    xs, ys = synthetic_batches(sizes, 32, seed)
    params = pop.init(lambda k: mlp_params(sizes, k), jax.random.key(seed), 2)
    optimizer, _, scan = loop_functions()
    alone = []
    for i in range(2):
        m = _copy(pop.member(params, i))
        alone.append(scan(m, optimizer.init(m), xs, ys)[2])
    trainer = pop.Population(mlp_apply, execution="vmap")
    _, losses = trainer.train(trainer.init(params, {"learning_rate": jnp.full((2,), LEARNING_RATE)}), xs, ys)
    return float(jnp.max(jnp.abs(losses - jnp.stack(alone))))


def grid_point(name: str, sizes, batch: int, p: int, args) -> dict:
    """Every variant at one (model, batch, P): throughput, GFLOP/s and ratios.

    First round: ``loop``, ``loop+scan``, then ``choose`` (which times
    three executions), then ``chunked32``; later rounds rotate over all.
    """
    xs, ys = synthetic_batches(sizes, batch, args.seed)
    params = pop.init(lambda k: mlp_params(sizes, k), jax.random.key(args.seed), p)
    runners = loop_runners(params, xs, ys)
    seconds = {variant: [_seconds(run)] for variant, run in runners.items()}
    trainers, choice, first = population_trainers(params, xs, ys, args.choose_repeats)
    runners.update(trainers)
    seconds.update({variant: [s] for variant, s in first.items()})
    seconds = interleaved_seconds(runners, seconds, args.min_rounds, args.max_rounds, args.budget_s)
    flops = step_flops(sizes, batch)
    loop_rate = p * STEPS / statistics.median(seconds["loop"])
    variants = {}
    for variant in ("loop", "loop+scan", *EXECUTIONS):
        if variant in seconds:
            rate = p * STEPS / statistics.median(seconds[variant])
            variants[variant] = {
                "seconds_per_call": statistics.median(seconds[variant]),
                "rounds": len(seconds[variant]),
                "round_seconds": [round(t, 6) for t in seconds[variant]],
                "member_steps_per_s": rate,
                "gflops": rate * flops / 1e9,
                "vs_loop": rate / loop_rate,
            }
    executions = [e for e in EXECUTIONS if e in variants]
    best = max(executions, key=lambda e: variants[e]["member_steps_per_s"])
    chosen = choice["chosen"]
    chosen_variant = f"chunked{CHUNKS[0]}" if chosen == "chunked" else chosen
    return {
        "model": name,
        "layers": list(sizes),
        "batch": batch,
        "population": p,
        "steps_per_call": STEPS,
        "flops_per_member_step": flops,
        "variants": variants,
        "best": best,
        "best_vs_loop": variants[best]["vs_loop"],
        "best_vs_loop_scan": variants[best]["member_steps_per_s"] / variants["loop+scan"]["member_steps_per_s"],
        "loop_scan_vs_loop": variants["loop+scan"]["vs_loop"],
        "auto_chosen": chosen,
        "auto_seconds_per_call": choice["seconds_per_call"],
        # at P <= 8 choose's chunk of 8 covers every member, and that "chunked" is not a variant here
        "auto_vs_best": variants[chosen_variant]["member_steps_per_s"] / variants[best]["member_steps_per_s"]
        if chosen_variant in variants
        else None,
    }


# report ---------------------------------------------------------------------------------------
def print_row(row: dict, header: bool) -> None:
    columns = ("loop", "loop+scan", *EXECUTIONS)
    if header:
        print(
            f"{'model':<7} {'batch':>5} {'P':>5} "
            + " ".join(f"{c:>10}" for c in columns)
            + f" {'best':>10} {'auto':>10} {'best/loop':>9} {'best/scan':>9} {'GFLOP/s':>8} {'ceil%':>6} {'bound':>6}"
        )
    v = row["variants"]
    cells = " ".join(f"{v[c]['member_steps_per_s']:>10.0f}" if c in v else f"{'-':>10}" for c in columns)
    best = v[row["best"]]
    print(
        f"{row['model']:<7} {row['batch']:>5} {row['population']:>5} {cells} {row['best']:>10} "
        f"{row['auto_chosen']:>10} {row['best_vs_loop']:>9.2f} {row['best_vs_loop_scan']:>9.2f} "
        f"{best['gflops']:>8.1f} {100 * best['ceiling_fraction']:>6.1f} {row['bound_vs_loop']:>6.1f}"
    )


def targets_from(rows: list[dict], gpu: bool) -> list[dict]:
    """The targets, computed from the grid rows."""
    digits = [r["best_vs_loop"] for r in rows if r["model"] == "digits" and r["population"] == 128]
    overall = min(r["best_vs_loop"] for r in rows)
    targets = []
    if digits:
        targets.append(
            {
                "name": "population / loop throughput, digits MLP, P=128",
                "measured": round(min(digits), 3),
                "goal": ">= 5",
                "met": min(digits) >= 5,
            }
        )
    targets.append(
        {
            "name": "min population / loop ratio over the grid",
            "measured": round(overall, 3),
            "goal": ">= 1.0",
            "met": overall >= 1.0,
        }
    )
    if gpu:
        at_1024 = min(r["best_vs_loop"] for r in rows if r["population"] == GPU_POPULATION)
        targets.append(
            {
                "name": f"GPU: population / loop at P={GPU_POPULATION}",
                "measured": round(at_1024, 3),
                "goal": ">= 50",
                "met": at_1024 >= 50,
            }
        )
    return targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds (< 10 min on 2 cores)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"--models: expected a comma list from {','.join(MODELS)}, got {args.models!r}")
    if args.quick:
        args.min_rounds, args.max_rounds, args.budget_s, args.choose_repeats, ceiling_repeats = 1, 5, 10.0, 1, 5
    else:
        args.min_rounds, args.max_rounds, args.budget_s, args.choose_repeats, ceiling_repeats = 3, 9, 60.0, 3, 11
    gpu = jax.default_backend() == "gpu"
    populations = (*POPULATIONS, GPU_POPULATION) if gpu else POPULATIONS
    started = time.perf_counter()
    ceiling_start = matmul_ceiling(ceiling_repeats)
    print("float32 matmul GFLOP/s: " + ", ".join(f"n={n}: {g:.1f}" for n, g in ceiling_start.items()), flush=True)
    checks = {name: same_math_check(MODELS[name], args.seed) for name in names}
    print("max |loss(loop+scan) - loss(vmap)| over 50 steps: " + ", ".join(f"{k}: {v:.2e}" for k, v in checks.items()))
    rows = []
    for name in names:
        for batch in BATCHES:
            for p in populations:
                rows.append(grid_point(name, MODELS[name], batch, p, args))
                print(f"done {name} batch {batch} P={p} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    ceiling_end = matmul_ceiling(ceiling_repeats)
    print("float32 matmul GFLOP/s at the end: " + ", ".join(f"n={n}: {g:.1f}" for n, g in ceiling_end.items()))
    ceiling = max(*ceiling_start.values(), *ceiling_end.values())
    for row in rows:
        for v in row["variants"].values():
            v["ceiling_fraction"] = v["gflops"] / ceiling
        row["bound_vs_loop"] = ceiling / row["variants"]["loop"]["gflops"]
    print(f"member-steps/s per variant (P * {STEPS} / seconds per call); best = fastest population execution")
    for i, row in enumerate(rows):
        print_row(row, header=i == 0)
    wall = time.perf_counter() - started
    print(f"ceil% = best's GFLOP/s / {ceiling:.1f}; bound = {ceiling:.1f} / loop's GFLOP/s; wall clock {wall:.0f} s")
    results = [
        {
            "matmul_gflops": {
                "start": {str(n): g for n, g in ceiling_start.items()},
                "end": {str(n): g for n, g in ceiling_end.items()},
                "ceiling": ceiling,
            },
            "same_math_max_loss_difference": checks,
            "backend": jax.default_backend(),
        },
        *rows,
    ]
    targets = targets_from(rows, gpu)
    print(json.dumps({"bench": "population", "env": measure.environment(), "results": results, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
