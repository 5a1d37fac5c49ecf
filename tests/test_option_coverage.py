"""Which test sets each config option to a non-default value and checks its effect.

COVERED maps every option of workflow/schemas/config.schema.yaml (dotted path inside an
experiment, or a top-level key) to the test that covers it, as a pytest node id without
parameters. A new schema option fails `test_every_schema_option_has_a_covering_test` until it
gets an entry here (and a test): add one line.
"""

import ast
from pathlib import Path

import pytest

from gradscope.config import load_schema

REPO = Path(__file__).resolve().parents[1]

C = "tests/test_workflow_coverage.py::"
V = "tests/test_workflow_values.py::"
W = "tests/test_workflow.py::"
D = "tests/test_data.py::"
S = "tests/test_sources.py::"
M = "tests/test_models.py::"
O = "tests/test_optim.py::"
T = "tests/test_train.py::"
G = "tests/test_signals.py::"
K = "tests/test_curvature.py::"
E = "tests/test_examples.py::"
R = "tests/test_reliability.py::"

COVERED = {
    # ---- top level ----
    "device": R + "test_cuda_without_cuda_stops_at_validation",
    "extend_experiments": R + "test_merge_rule_a_config_file_replaces_the_default_experiments_unless_it_extends_them",
    "cluster.group_checkpoint_jobs": "tests/test_resources.py::test_slurm_profile_plans_one_submission_per_run_for_its_checkpoint_jobs",
    "checkpoint_jobs": "tests/test_resources.py::test_slurm_profile_plans_one_submission_per_run_for_its_checkpoint_jobs",
    "dashboard.max_examples": "tests/test_dashboard.py::test_selection_keeps_planted_and_flagged_and_fills_to_the_cap",
    "dashboard.top_k": "tests/test_dashboard.py::test_selection_keeps_planted_and_flagged_and_fills_to_the_cap",
    "dashboard.seed": "tests/test_dashboard.py::test_selection_keeps_planted_and_flagged_and_fills_to_the_cap",
    "dashboard.initial_runs": "tests/test_dashboard.py::test_workflow_writes_the_pages",
    "grid": W + "test_new_grid_value_runs_only_the_new_run_and_the_sweep_report_covers_all",
    "seeds": W + "test_new_seed_plans_only_the_new_seeds_jobs",
    # ---- data ----
    "data.generator": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "data.planted_flips.n_train": W + "test_artifacts_read_back_with_pandas_and_duckdb",
    "data.planted_flips.n_test": W + "test_artifacts_read_back_with_pandas_and_duckdb",
    "data.planted_flips.n_features": V + "test_examples_table_matches_vmap_gradients_against_the_training_mean",
    "data.planted_flips.n_classes": D + "test_planted_flips_ground_truth_is_exactly_the_flipped_labels",
    "data.planted_flips.teacher": D + "test_planted_flips_ground_truth_is_exactly_the_flipped_labels",
    "data.planted_flips.teacher_width": D + "test_planted_flips_ground_truth_is_exactly_the_flipped_labels",
    "data.planted_flips.flip_fraction": D + "test_planted_flips_ground_truth_is_exactly_the_flipped_labels",
    "data.planted_flips.seed": D + "test_planted_flips_is_seeded",
    "data.planted_flips.standardize": D + "test_planted_flips_standardize_keeps_labels",
    "data.modular.p": D + "test_modular_labels_and_split_by_brute_force",
    "data.modular.op": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "data.modular.train_fraction": D + "test_modular_labels_and_split_by_brute_force",
    "data.modular.seed": D + "test_modular_labels_and_split_by_brute_force",
    "data.opposing_features.n_train": D + "test_opposing_group_sizes_are_the_rounded_minority_fraction",
    "data.opposing_features.n_test": D + "test_opposing_is_seeded_and_train_does_not_depend_on_n_test",
    "data.opposing_features.side": D + "test_opposing_members_carry_the_other_class_background",
    "data.opposing_features.n_classes": D + "test_opposing_group_sizes_are_the_rounded_minority_fraction",
    "data.opposing_features.patch": D + "test_opposing_patches_must_fit",
    "data.opposing_features.signal": D + "test_opposing_members_carry_the_other_class_background",
    "data.opposing_features.background": D + "test_opposing_members_carry_the_other_class_background",
    "data.opposing_features.minority_fraction": D + "test_opposing_group_sizes_are_the_rounded_minority_fraction",
    "data.opposing_features.noise": D + "test_opposing_members_carry_the_other_class_background",
    "data.opposing_features.seed": D + "test_opposing_is_seeded_and_train_does_not_depend_on_n_test",
    "data.opposing_features.standardize": D + "test_standardization_uses_training_statistics_only",
    "data.digits.train_fraction": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "data.digits.label_noise": D + "test_digits_shape_classes_and_planted_noise_are_exact",
    "data.digits.seed": D + "test_digits_shape_classes_and_planted_noise_are_exact",
    "data.digits.standardize": D + "test_digits_are_the_real_sklearn_digits",
    "data.mnist1d.num_samples": S + "test_mnist1d_is_the_packages_dataset_built_offline_without_touching_global_rngs",
    "data.mnist1d.train_split": S + "test_mnist1d_is_the_packages_dataset_built_offline_without_touching_global_rngs",
    "data.mnist1d.seed": S + "test_mnist1d_is_the_packages_dataset_built_offline_without_touching_global_rngs",
    "data.mnist1d.label_noise": S + "test_mnist1d_reads_back_as_one_channel_signals",
    "data.mnist1d.subsample_train": S + "test_mnist1d_reads_back_as_one_channel_signals",
    "data.mnist1d.subsample_test": S + "test_mnist1d_reads_back_as_one_channel_signals",
    "data.mnist1d.standardize": S + "test_mnist1d_reads_back_as_one_channel_signals",
    "data.torchvision.name": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.root": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.download": S + "test_torchvision_errors_name_the_root_and_how_to_get_the_files",
    "data.torchvision.kwargs": S + "test_svhn_mat_files_load_through_torchvision_with_split",
    "data.torchvision.seed": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.label_noise": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.subsample_train": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.subsample_test": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.standardize": S + "test_cifar10_pickles_load_through_torchvision",
    "data.files.train": S + "test_npz_train_and_test_files",
    "data.files.test": S + "test_npz_train_and_test_files",
    "data.files.x_key": S + "test_parquet_list_columns_flat_and_nested",
    "data.files.y_key": S + "test_parquet_list_columns_flat_and_nested",
    "data.files.id_key": S + "test_one_npz_with_a_split_array_ids_and_a_shape",
    "data.files.split_key": S + "test_one_npz_with_a_split_array_ids_and_a_shape",
    "data.files.shape": S + "test_one_npz_with_a_split_array_ids_and_a_shape",
    "data.files.seed": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.files.label_noise": S + "test_label_noise_plants_exactly_the_flipped_ids",
    "data.files.subsample_train": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.files.subsample_test": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.files.standardize": S + "test_feature_standardization_uses_the_subsampled_training_rows_only",
    "data.python.factory": S + "test_label_noise_plants_exactly_the_flipped_ids",
    "data.python.kwargs": S + "test_channel_standardization_and_tensor_factories_keep_the_image_shape",
    "data.python.seed": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.python.label_noise": S + "test_label_noise_plants_exactly_the_flipped_ids",
    "data.python.subsample_train": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.python.subsample_test": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.python.standardize": S + "test_channel_standardization_and_tensor_factories_keep_the_image_shape",
    # ---- model ----
    "model.kind": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "model.channels": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "model.base_width": M + "test_resnet18_and_vgg11_at_full_width_have_the_reference_sizes",
    "model.blocks": M + "test_resnet18_and_vgg11_at_full_width_have_the_reference_sizes",
    "model.norm": M + "test_resnet_and_vgg_train_and_reload",
    "model.groups": M + "test_group_norm_needs_groups_dividing_the_channels",
    "model.factory": M + "test_python_factory_gets_the_input_shape_and_kwargs",
    "model.kwargs": M + "test_python_factory_gets_the_input_shape_and_kwargs",
    "model.init_scale": M + "test_mlp_init_scale",
    "model.depth": V + "test_examples_table_matches_vmap_gradients_against_the_training_mean",
    "model.width": V + "test_examples_table_matches_vmap_gradients_against_the_training_mean",
    "model.activation": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "model.input_encoding": "tests/test_resources.py::test_parameter_counts_match_the_built_models",
    "model.embed_dim": "tests/test_resources.py::test_parameter_counts_match_the_built_models",
    "model.d_model": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.n_heads": E + "test_transformer_matches_loop",
    "model.d_head": E + "test_transformer_matches_loop",
    "model.d_mlp": E + "test_transformer_matches_loop",
    "model.n_layers": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.layer_norm": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.init": "tests/test_nanda_init.py::test_every_tensor_has_the_papers_std_and_zero_mean_and_biases_are_zero",
    # ---- optim ----
    "optim.name": O + "test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay",
    "optim.lr": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.momentum": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.nesterov": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.alpha": O + "test_rmsprop_step_with_its_alpha_eps_and_momentum",
    "optim.weight_decay": V + "test_training_metrics_and_checkpoints_are_the_library_s",
    "optim.betas": O + "test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay",
    "optim.eps": O + "test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay",
    "optim.warmup_steps": T + "test_warmup_and_clipping_are_logged",
    "optim.grad_clip": O + "test_the_update_is_clipped_to_grad_clip_only_when_the_gradient_is_longer",
    "optim.schedule.kind": T + "test_schedules",
    "optim.schedule.min_lr_ratio": T + "test_schedules",
    "optim.schedule.step_size": T + "test_schedules",
    "optim.schedule.gamma": T + "test_schedules",
    "optim.schedule.metric": T + "test_other_optimizers_and_schedules_train",
    "optim.schedule.factor": T + "test_schedules",
    "optim.schedule.patience": T + "test_schedules",
    "optim.schedule.threshold": T + "test_schedules",
    # ---- train ----
    "train.steps": W + "test_config_override_reaches_the_rules_and_the_resolved_config",
    "train.batch_size": C + "test_adam_with_its_betas_and_eps_and_minibatches_of_8",
    "train.loss": C + "test_mse_loss_is_logged_and_measured",
    "train.log_every": T + "test_training_writes_metrics_and_checkpoints",
    "train.early_stopping.metric": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "train.early_stopping.patience": T + "test_early_stopping_ends_training_and_fills_later_checkpoints",
    "train.early_stopping.min_delta": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "train.dynamics_every": C + "test_mse_loss_is_logged_and_measured",
    "train.checkpoints.every": T + "test_training_writes_metrics_and_checkpoints",
    "train.checkpoints.at": W + "test_config_override_reaches_the_rules_and_the_resolved_config",
    "train.checkpoints.log_spaced": "tests/test_config.py::test_checkpoint_steps_include_first_and_last",
    # ---- examples ----
    "examples.proj_dim": W + "test_artifacts_read_back_with_pandas_and_duckdb",
    "examples.proj_dtype": C + "test_projection_in_float16_with_its_own_seed",
    "examples.seed": C + "test_projection_in_float16_with_its_own_seed",
    "examples.batch_size": V + "test_examples_table_matches_vmap_gradients_against_the_training_mean",
    "examples.trainable_only": "tests/test_grad_rules.py::test_frozen_parameters_are_left_out",
    "examples.projection": C + "test_hadamard_projection_and_influence_options",
    # ---- influence ----
    "influence.enabled": C + "test_hadamard_projection_and_influence_options",
    "influence.test_examples": C + "test_hadamard_projection_and_influence_options",
    "influence.top_k": C + "test_hadamard_projection_and_influence_options",
    "influence.seed": C + "test_hadamard_projection_and_influence_options",
    "influence.report_examples": C + "test_hadamard_projection_and_influence_options",
    # ---- progress ----
    "progress.enabled": "tests/test_progress.py::test_only_modular_add_and_sub_runs_with_progress_enabled_plan_the_stage",
    "progress.key_frequencies": "tests/test_progress.py::test_key_frequencies_from_the_final_or_each_checkpoint",
    "progress.key_frequencies_from": "tests/test_progress.py::test_key_frequencies_from_the_final_or_each_checkpoint",
    # ---- signals ----
    "signals.detectors": C + "test_detector_subset_and_thresholds",
    "signals.cos_rule.threshold": C + "test_detector_subset_and_thresholds",
    "signals.opposing_groups.top_k": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "signals.opposing_groups.n_groups": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "signals.opposing_groups.seed": G + "test_find_groups_recovers_the_planted_opposing_pair",
    "signals.loss_trajectory.window": C + "test_detector_subset_and_thresholds",
    "signals.loss_trajectory.slope_threshold": C + "test_detector_subset_and_thresholds",
    "signals.loss_trajectory.volatility_threshold": C + "test_detector_subset_and_thresholds",
    "signals.cartography.confidence_threshold": G + "test_cartography_forgetting_aum_tracin_by_loop",
    "signals.forgetting.min_events": G + "test_cartography_forgetting_aum_tracin_by_loop",
    "signals.el2n.flag_fraction": C + "test_detector_subset_and_thresholds",
    "signals.grand.flag_fraction": "tests/test_edge_cases.py::test_fraction_detectors_flag_the_rounded_up_count",
    "signals.aum.threshold": C + "test_detector_subset_and_thresholds",
    "signals.tracin.flag_fraction": C + "test_detector_subset_and_thresholds",
    "signals.high_loss": G + "test_cos_rule_high_loss_el2n_grand_read_their_column",  # no settings: runs by default
    "signals.generalization.train_acc": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "signals.generalization.test_acc": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    # ---- curvature ----
    "curvature.subset_size": V + "test_curvature_table_matches_the_exact_hessian_of_the_seeded_subset",
    "curvature.seed": V + "test_curvature_table_matches_the_exact_hessian_of_the_seeded_subset",
    "curvature.top_k": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.lanczos_iters": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.eigenvectors": W + "test_eigenvectors_saved_and_warm_start_chains_a_runs_curvature_jobs",
    "curvature.warm_start": W + "test_eigenvectors_saved_and_warm_start_chains_a_runs_curvature_jobs",
    "curvature.lanczos_tol": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.trace_tol": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.trace_max_samples": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.fisher": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.gauss_newton_samples": C + "test_density_per_layer_and_gauss_newton_samples",
    "curvature.input_sensitivity": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.update_sharpness": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.density": C + "test_density_per_layer_and_gauss_newton_samples",
    "curvature.density_iters": K + "test_compute_curvature_extras_match_the_standalone_measures",
    "curvature.per_layer": C + "test_density_per_layer_and_gauss_newton_samples",
    "curvature.ggn": K + "test_compute_curvature_ggn_top_eigenvalue_and_density",
    # ---- plots ----
    "plots.dpi": "tests/test_plots.py::test_plot_training",
    "plots.gif_points": "tests/test_plots.py::test_render_projection_animation",
    "plots.frame_duration_s": "tests/test_plots.py::test_render_projection_animation",
}


def schema_options() -> list[str]:
    """Every option of the schema: dotted paths inside an experiment, and the top-level keys."""
    schema = load_schema()
    defs = schema["$defs"]

    def resolve(node):
        while "$ref" in node:
            node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(node, prefix):
        node = resolve(node)
        props = node.get("properties")
        if props and not prefix.endswith("kwargs"):  # kwargs are free-form
            for key, sub in props.items():
                yield from walk(sub, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix

    out = []
    for key, node in schema["properties"].items():
        out += list(walk(defs["experiment"], "")) if key == "experiments" else list(walk(node, key))
    return out


def test_every_schema_option_has_a_covering_test():
    options = schema_options()
    assert len(options) > 100  # the walk reaches every block
    missing = [o for o in options if o not in COVERED]
    assert not missing, f"schema options with no covering test (add them to COVERED): {missing}"
    stale = sorted(set(COVERED) - set(options))
    assert not stale, f"COVERED names options the schema no longer has: {stale}"


@pytest.mark.parametrize("node", sorted(set(COVERED.values())))
def test_each_covering_test_exists(node):
    path, name = node.split("::")
    tree = ast.parse((REPO / path).read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert name in names, f"{node} does not exist"
