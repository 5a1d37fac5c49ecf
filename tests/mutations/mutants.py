"""A curated list of plausible bugs, each with the tests that must catch it (tests/mutations/run.py).

Each mutant replaces one exact snippet (it must occur exactly once in its file; tests/project/test_mutants.py
checks that, so the list cannot rot silently) and names the tests to run: a file, or a node id.
Add a bug here when a review finds one the suite missed, with the test that now catches it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str


OPTIM, TRAIN, DYN = "src/gradscope/optim.py", "src/gradscope/train.py", "src/gradscope/dynamics.py"
SIGNALS, BASE = "src/gradscope/signals.py", "src/gradscope/grad_rules/base.py"
LANCZOS, CURV = "src/gradscope/curvature/lanczos.py", "src/gradscope/curvature/measures.py"
PIPE, EXAMPLES, MODELS = "src/gradscope/pipeline.py", "src/gradscope/examples.py", "src/gradscope/models.py"
TRANSFORMER, CONVNETS = "src/gradscope/transformer.py", "src/gradscope/convnets.py"
T_OPTIM, T_EDGE = "tests/test_optim.py", "tests/test_edge_cases.py"
T_VALUES, T_COVER = "tests/workflow/test_workflow_values.py::", "tests/workflow/test_workflow_coverage.py::"
V_EXAMPLES = T_VALUES + "test_examples_table_matches_vmap_gradients_against_the_training_mean"
V_CURVATURE = T_VALUES + "test_curvature_table_matches_the_exact_hessian_of_the_seeded_subset"
V_SIGNALS = T_VALUES + "test_detections_and_per_example_table_are_the_detectors_on_the_workflow_s_examples"
C_PROJ = T_COVER + "test_projection_in_float16_with_its_own_seed"
C_CURV = T_COVER + "test_curvature_options_turned_off_and_top_k_without_tolerance"
C_BATCH = T_COVER + "test_adam_with_its_betas_and_eps_and_minibatches_of_8"
C_CNN = T_COVER + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping"
C_MSE = T_COVER + "test_mse_loss_is_logged_and_measured"
PROJ, INFL = "src/gradscope/projection.py", "src/gradscope/influence.py"
T_PROJ, T_INFL, T_RULES = "tests/test_projection.py", "tests/test_influence.py", "tests/grad_rules/test_grad_rules.py"
W_INFLUENCE = "tests/workflow/test_workflow.py::test_influence_tables_are_tracin_cp_of_the_stored_projections"
PLOTS, T_PLOTS, T_MODEL_VALUES = "src/gradscope/plots.py", "tests/test_plots.py", "tests/test_model_values.py"

MUTANTS = [
    # ---- the list (#18) -------------------------------------------------------------------
    Mutant("adamw_is_adam", OPTIM,
           'return torch.optim.AdamW(params, lr=lr, betas=tuple(optim["betas"]), eps=optim["eps"], weight_decay=wd)',
           'return torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"]), eps=optim["eps"], weight_decay=wd)',
           (T_OPTIM,), "adamw builds Adam (L2 decay instead of decoupled)"),
    Mutant("nesterov_ignored", OPTIM, 'nesterov=bool(optim["nesterov"])', "nesterov=False",
           (T_OPTIM,), "SGD ignores nesterov"),
    Mutant("rmsprop_alpha_fixed", OPTIM, 'alpha=optim["alpha"]', "alpha=0.99",
           (T_OPTIM,), "RMSprop's alpha hard-coded"),
    Mutant("adam_eps_fixed", OPTIM,
           'torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"]), eps=optim["eps"]',
           'torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"]), eps=1e-8',
           (T_OPTIM,), "Adam's eps hard-coded"),
    Mutant("adam_betas_fixed", OPTIM,
           'torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"])',
           'torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999)',
           (T_OPTIM,), "Adam's betas hard-coded"),
    Mutant("no_clipping", TRAIN,
           "        if clipped:\n            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)",
           "        if clipped:\n            pass",
           (T_OPTIM,), "the loop logs clipping but never clips"),
    Mutant("dynamics_m_no_bias_correction", DYN, 'm_hat = state["exp_avg"] / (1 - b1**t)', 'm_hat = state["exp_avg"]',
           (T_OPTIM,), "Adam's first moment without bias correction in the dynamics log"),
    Mutant("dynamics_v_no_bias_correction", DYN, 'denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt()',
           'denom = state["exp_avg_sq"].sqrt()', (T_OPTIM,),
           "Adam's second moment without bias correction in the dynamics log"),
    Mutant("top_fraction_floor", SIGNALS, "math.ceil(fraction * score.shape[1] - 1e-9)",
           "math.floor(fraction * score.shape[1] + 1e-9)", (T_EDGE,), "flag fractions round down"),
    Mutant("top_fraction_no_float_guard", SIGNALS, "math.ceil(fraction * score.shape[1] - 1e-9)",
           "math.ceil(fraction * score.shape[1])", (T_EDGE,), "0.3 x 10 flags 4 (float rounding)"),
    Mutant("tracin_lr_left", SIGNALS, 'side="right"', 'side="left"', (T_EDGE,),
           "a checkpoint on a logged lr change reads the previous lr"),
    Mutant("opposition_includes_first", SIGNALS, "-(cos[1:] if len(cos) > 1 else cos).mean(0)", "-cos.mean(0)",
           (T_EDGE,), "run-level opposition averages the first checkpoint too"),
    Mutant("explicit_sub_batch_first_rows", BASE,
           'H = self.h(s, s + step)\n                yield s, torch.einsum("btjo,btji->bjoi", self.G[s : s + len(H)], H)',
           'H = self.h(0, step)\n                yield s, torch.einsum("btjo,btji->bjoi", self.G[0 : len(H)], H)',
           (T_EDGE,), "every explicit sub-batch uses the first rows"),
    Mutant("explicit_sum_first_rows", BASE, "H = self.h(s, s + step)\n            G = self.G[s : s + len(H)]",
           "H = self.h(0, step)\n            G = self.G[0 : len(H)]", (T_EDGE,),
           "every sub-batch of a Tokens sum uses the first rows"),
    Mutant("warm_start_no_random_part", LANCZOS, "q = w / w.norm() + mix * q", "q = w / w.norm()",
           (T_EDGE,), "a warm start without its random part cannot find a new top direction"),

    # ---- glue between the rules and the library (tests/workflow/test_workflow_values.py, tests/workflow/test_workflow_coverage.py) ----
    Mutant("test_cosines_against_their_own_mean", PIPE,
           'seed=settings["seed"], batch_size=settings["batch_size"], mean_grad=mean_grad,',
           'seed=settings["seed"], batch_size=settings["batch_size"], mean_grad=None if split == "test" else mean_grad,',
           (V_EXAMPLES,), "test examples' cosines against the test split's own mean gradient"),
    Mutant("curvature_subset_shifted", PIPE, 'permutation(len(y))[: settings["subset_size"]]',
           'permutation(len(y))[1 : settings["subset_size"] + 1]', (V_CURVATURE,),
           "the curvature subset is not the documented seeded one"),
    Mutant("signals_without_lr", PIPE, 'read_trajectories(examples_paths, metrics.set_index("step")["lr"], settings)',
           "read_trajectories(examples_paths, None, settings)", (V_SIGNALS,),
           "TracIn without the logged learning rate"),
    Mutant("examples_seed_ignored", PIPE, 'seed=settings["seed"], batch_size=settings["batch_size"], mean_grad=mean_grad,',
           'seed=0, batch_size=settings["batch_size"], mean_grad=mean_grad,', (C_PROJ,),
           "examples.seed never reaches the projection"),
    Mutant("top_k_ignored", CURV, 'lanczos_top(hessian, k=s["top_k"]', "lanczos_top(hessian, k=1", (C_CURV,),
           "curvature.top_k ignored"),
    Mutant("lanczos_tol_zero_ignored", CURV, 'tol=s["lanczos_tol"] or None, seed=s["seed"],\n',
           "tol=s['lanczos_tol'] or 1e-3, seed=s['seed'],\n", (C_CURV,), "lanczos_tol 0 does not run every step"),
    Mutant("update_sharpness_always", "src/gradscope/curvature/replay.py", "if not wanted or why:", "if why:", (C_CURV,),
           "update_sharpness: false ignored"),
    Mutant("minibatches_ignored", TRAIN, 'batch_size = train_cfg["batch_size"] or n', "batch_size = n", (C_BATCH,),
           "train.batch_size ignored: always full batch"),
    Mutant("gelu_is_relu", "src/gradscope/activations.py", '"gelu": nn.GELU', '"gelu": nn.ReLU', (C_CNN,), "activation gelu builds ReLU"),
    Mutant("mse_without_half", "src/gradscope/losses.py", "return 0.5 * ((logits - onehot) ** 2).sum(dim=-1)",
           "return ((logits - onehot) ** 2).sum(dim=-1)", (C_MSE,), "MSE loss off by its documented factor 1/2"),
    # ---- projections and influence (#17) ------------------------------------------------------------
    Mutant("hadamard_tokens_unscaled", PROJ, "short, long = self.out.mix(G, self.scale), self.inp.mix(H, keep=need)",
           "short, long = self.out.mix(G), self.inp.mix(H, keep=need)", (T_PROJ,),
           "the rank-one path of the hadamard projection without its sqrt(PQ/k)"),
    Mutant("hadamard_windows_unshifted", PROJ, "(long.shape[1], 1, 1))", "(long.shape[1], 0, 1))", (T_PROJ,),
           "every block of outputs reads the same window (pairs repeat)"),
    Mutant("count_sketch_unsigned", PROJ, "self.sign_perm.to(acc.dtype)\n",
           "torch.ones_like(self.sign_perm).to(acc.dtype)\n", (T_RULES,), "the engine's count sketch without its signs"),
    Mutant("injection_tokens_unsigned", PROJ, "addcmul_((G * self.s_r).to(acc.dtype).unsqueeze(2)",
           "addcmul_(G.to(acc.dtype).unsqueeze(2)", (T_PROJ,),
           "the signed injection's rank-one path without its row signs"),
    Mutant("token_sums_read_off_the_pairs", PROJ, "(W * self.m, self.m, self.m + 1))",
           "(W * self.m, self.m, 1))", (T_RULES,),
           "the per-example token sums read entry (i, r) instead of the kept pair (i, i + r)"),
    Mutant("explicit_projection_overwrites", BASE, "acc[s : s + len(E)] += f.project(E.reshape(len(E), g * c_out",
           "acc[s : s + len(E)] = f.project(E.reshape(len(E), g * c_out", (T_RULES,),
           "a convolution's projection replaces, not adds to, the other layers'"),
    Mutant("influence_without_lr", PIPE,
           'lr = signals.lr_at(artifacts.read_parquet(metrics_path).set_index("step")["lr"], steps)',
           "lr = np.ones(len(steps))", (W_INFLUENCE,), "TracIn-CP without the learning rate of each checkpoint"),
    Mutant("opponents_are_proponents", INFL, "(-scores).topk(top_k, dim=1)", "scores.topk(top_k, dim=1)",
           (T_INFL,), "opponents taken from the top of the scores"),
    Mutant("contributions_without_lr", INFL, "contrib[s : s + len(best), :, :, c] = (rates[c] * (",
           "contrib[s : s + len(best), :, :, c] = (1.0 * (", (T_INFL,),
           "per-checkpoint contributions that do not sum to the score"),
    # ---- model and figure values (#18) --------------------------------------------------------------
    Mutant("attention_not_causal", TRANSFORMER, 'scores = scores.masked_fill(~causal, float("-inf"))', "scores = scores",
           (T_MODEL_VALUES,), "the transformer's attention sees later positions"),
    Mutant("block_skips_ln1", TRANSFORMER, "+ self.attn(self.ln1(x), last_only=last_only)",
           "+ self.attn(x, last_only=last_only)", (T_MODEL_VALUES,), "LayerNorm before attention not applied"),
    Mutant("cnn_pool_stride_1", CONVNETS, "_MAX_POOL[nd](2)", "_MAX_POOL[nd](2, stride=1)", (T_MODEL_VALUES,),
           "the CNN pools with the wrong stride"),
    Mutant("training_plot_unshifted_steps", PLOTS,
           'x = m["step"].to_numpy(dtype=float) + 1.0\n    fig, (ax_loss, ax_acc)',
           'x = m["step"].to_numpy(dtype=float) + 0.0\n    fig, (ax_loss, ax_acc)', (T_PLOTS,),
           "the training figure's log step axis without its + 1"),
    Mutant("curvature_plot_threshold_doubled", PLOTS,
           'ax_s.axhline(threshold, color="0.2"', 'ax_s.axhline(2 * threshold, color="0.2"', (T_PLOTS,),
           "the 2/lr line drawn at the wrong height"),
    # ---- later engine and reliability changes ---------------------------------------------------------
    Mutant("conv1d_gram_ignores_dilation", "src/gradscope/grad_rules/conv.py", "offsets = [(j * dilation // step, j * dilation % step)",
           "offsets = [(j // step, j % step)", (T_RULES + "::test_conv1d_gram_path_without_unfolding",),
           "a dilated 1-D convolution's patch Gram read at undilated kernel offsets"),
    Mutant("parquet_tail_unchecked", "src/gradscope/artifacts.py", 'if head != b"PAR1" or tail != b"PAR1":',
           'if head != b"PAR1":',
           ("tests/workflow/test_reliability.py::test_a_damaged_parquet_or_json_file_is_named_by_every_workflow_start",),
           "a Parquet table cut short (its footer gone) looks whole at the workflow's start"),
]
