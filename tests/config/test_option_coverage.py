"""Which test sets each config option to a non-default value and checks its effect.

COVERED maps every option of src/gradscope/schemas/config.schema.yaml (dotted path inside an
experiment, or a top-level key) to the test that covers it, as a pytest node id without
parameters. A new schema option fails `test_every_schema_option_has_a_covering_test` until it
gets an entry here (and a test): add one line.
"""

import ast

import pytest

from gradscope.config import load_schema
from support.workflow import REPO


C = "tests/workflow/test_workflow_coverage.py::"
V = "tests/workflow/test_workflow_values.py::"
W = "tests/workflow/test_workflow.py::"
D = "tests/data/test_data.py::"
S = "tests/data/test_sources.py::"
M = "tests/test_models.py::"
O = "tests/test_optim.py::"
T = "tests/test_train.py::"
G = "tests/test_signals.py::"
K = "tests/curvature/test_measures.py::"
E = "tests/test_examples.py::"
R = "tests/workflow/test_reliability.py::"
F = "tests/workflow/test_option_effects.py::"
X = "tests/test_external.py::"
L = "tests/test_timeline.py::"
P = "tests/data/test_spurious.py::"
N = "tests/data/test_noise.py::"
I = "tests/test_interventions.py::"

COVERED = {
    # ---- top level ----
    "source.recorded": X + "test_a_recorded_run_gives_the_trained_runs_examples_and_signals_tables",
    "source.checkpoints": X + "test_a_folder_of_plain_checkpoints_is_analyzed_end_to_end",
    "source.glob": X + "test_a_glob_picks_hugging_faces_checkpoint_folders",
    "device": R + "test_cuda_without_cuda_stops_at_validation",
    "extend_experiments": R + "test_merge_rule_a_config_file_replaces_the_default_experiments_unless_it_extends_them",
    "limits.max_checkpoints": "tests/test_preflight.py::test_too_many_checkpoints_are_refused_naming_the_key_and_the_count",
    "limits.max_train_minutes": "tests/test_preflight.py::test_planned_training_time_is_refused_or_let_through_by_the_limit",
    "limits.max_memory_mb": "tests/test_preflight.py::test_memory_limit_defaults_to_this_machine_and_can_be_raised",
    "limits.probe_seconds": "tests/test_preflight.py::test_data_past_planning_bounds_defer_the_check_to_the_train_job_and_say_so",
    "cluster.group_checkpoint_jobs": "tests/test_resources.py::test_slurm_profile_plans_one_submission_per_run_for_its_checkpoint_jobs",
    "checkpoint_jobs": "tests/test_resources.py::test_slurm_profile_plans_one_submission_per_run_for_its_checkpoint_jobs",
    "threads.train": "tests/workflow/test_threads.py::test_each_stages_threads_reach_its_jobs_and_the_rest_stay_at_one",
    "threads.import_run": "tests/test_resources_threads.py::test_each_heavy_rule_reads_its_threads_from_the_setting_and_no_rule_hardcodes_more",
    "threads.extract_examples": "tests/workflow/test_threads.py::test_each_stages_threads_reach_its_jobs_and_the_rest_stay_at_one",
    "threads.curvature": "tests/workflow/test_threads.py::test_a_curvature_job_at_two_threads_uses_two",
    "threads.influence": "tests/workflow/test_threads.py::test_each_stages_threads_reach_its_jobs_and_the_rest_stay_at_one",
    "threads.detect_signals": "tests/workflow/test_threads.py::test_each_stages_threads_reach_its_jobs_and_the_rest_stay_at_one",
    "threads.dashboard": "tests/workflow/test_threads.py::test_each_stages_threads_reach_its_jobs_and_the_rest_stay_at_one",
    "dashboard.max_examples": "tests/dashboard/test_dashboard.py::test_selection_keeps_planted_and_flagged_and_fills_to_the_cap",
    "dashboard.top_k": F + "test_dashboard_top_k_and_seed_pick_the_examples",
    "dashboard.seed": F + "test_dashboard_top_k_and_seed_pick_the_examples",
    "dashboard.initial_runs": F + "test_dashboard_initial_runs_is_how_many_runs_the_page_shows_first",
    "grid": W + "test_new_grid_value_runs_only_the_new_run_and_the_sweep_report_covers_all",
    "seeds": W + "test_new_seed_plans_only_the_new_seeds_jobs",
    # ---- data ----
    "data.generator": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "data.planted_flips.n_train": W + "test_artifacts_read_back_with_pandas_and_duckdb",
    "data.planted_flips.n_test": W + "test_artifacts_read_back_with_pandas_and_duckdb",
    "data.planted_flips.n_features": W + "test_eigenvectors_saved_and_warm_start_chains_a_runs_curvature_jobs",
    "data.planted_flips.n_classes": F + "test_planted_flips_teacher_mlp_of_its_width_labels_the_examples",
    "data.planted_flips.teacher": F + "test_planted_flips_teacher_mlp_of_its_width_labels_the_examples",
    "data.planted_flips.teacher_width": F + "test_planted_flips_teacher_mlp_of_its_width_labels_the_examples",
    "data.planted_flips.flip_fraction": D + "test_planted_flips_ground_truth_is_exactly_the_flipped_labels",
    "data.planted_flips.seed": D + "test_planted_flips_is_seeded",
    "data.planted_flips.standardize": D + "test_planted_flips_standardize_keeps_labels",
    "data.modular.p": D + "test_modular_labels_and_split_by_brute_force",
    "data.modular.op": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "data.modular.train_fraction": D + "test_modular_labels_and_split_by_brute_force",
    "data.modular.seed": F + "test_modular_and_digits_seed_choose_the_split",
    "data.opposing_features.n_train": D + "test_opposing_group_sizes_are_the_rounded_minority_fraction",
    "data.opposing_features.n_test": D + "test_opposing_is_seeded_and_train_does_not_depend_on_n_test",
    "data.opposing_features.side": F + "test_opposing_features_side_patch_signal_and_background_build_the_images",
    "data.opposing_features.n_classes": D + "test_opposing_group_sizes_are_the_rounded_minority_fraction",
    "data.opposing_features.patch": F + "test_opposing_features_side_patch_signal_and_background_build_the_images",
    "data.opposing_features.signal": F + "test_opposing_features_side_patch_signal_and_background_build_the_images",
    "data.opposing_features.background": F + "test_opposing_features_side_patch_signal_and_background_build_the_images",
    "data.opposing_features.minority_fraction": D + "test_opposing_group_sizes_are_the_rounded_minority_fraction",
    "data.opposing_features.noise": D + "test_opposing_members_carry_the_other_class_background",
    "data.opposing_features.seed": D + "test_opposing_is_seeded_and_train_does_not_depend_on_n_test",
    "data.opposing_features.standardize": F + "test_opposing_features_side_patch_signal_and_background_build_the_images",
    "data.digits.train_fraction": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "data.digits.label_noise": D + "test_digits_shape_classes_and_planted_noise_are_exact",
    "data.digits.seed": F + "test_modular_and_digits_seed_choose_the_split",
    "data.digits.standardize": D + "test_digits_are_the_real_sklearn_digits",
    "data.mnist1d.num_samples": S + "test_mnist1d_is_the_packages_dataset_built_offline_without_touching_global_rngs",
    "data.mnist1d.train_split": F + "test_mnist1d_train_split_seed_and_standardize",
    "data.mnist1d.seed": F + "test_mnist1d_train_split_seed_and_standardize",
    "data.mnist1d.label_noise": S + "test_mnist1d_reads_back_as_one_channel_signals",
    "data.mnist1d.subsample_train": C + "test_resnet_with_batchnorm_on_mnist1d_through_the_workflow",
    "data.mnist1d.subsample_test": C + "test_resnet_with_batchnorm_on_mnist1d_through_the_workflow",
    "data.mnist1d.standardize": F + "test_mnist1d_train_split_seed_and_standardize",
    "data.torchvision.name": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.root": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.download": F + "test_torchvision_download_true_fetches_into_an_empty_root",
    "data.torchvision.kwargs": F + "test_torchvision_kwargs_reach_the_dataset_class",
    "data.torchvision.seed": C + "test_vgg_with_group_norm_on_torchvision_mnist_files_through_the_workflow",
    "data.torchvision.label_noise": S + "test_cifar10_pickles_load_through_torchvision",
    "data.torchvision.subsample_train": S + "test_mnist_idx_files_load_through_torchvision",
    "data.torchvision.subsample_test": C + "test_vgg_with_group_norm_on_torchvision_mnist_files_through_the_workflow",
    "data.torchvision.standardize": S + "test_cifar10_pickles_load_through_torchvision",
    "data.files.train": S + "test_npz_train_and_test_files",
    "data.files.test": S + "test_npz_train_and_test_files",
    "data.files.x_key": S + "test_parquet_list_columns_flat_and_nested",
    "data.files.y_key": C + "test_files_source_reads_one_parquet_file_with_split_and_id_columns",
    "data.files.id_key": S + "test_one_npz_with_a_split_array_ids_and_a_shape",
    "data.files.split_key": S + "test_one_npz_with_a_split_array_ids_and_a_shape",
    "data.files.shape": S + "test_one_npz_with_a_split_array_ids_and_a_shape",
    "data.files.seed": F + "test_files_subsample_seed_and_label_noise",
    "data.files.label_noise": F + "test_files_subsample_seed_and_label_noise",
    "data.files.subsample_train": F + "test_files_subsample_seed_and_label_noise",
    "data.files.subsample_test": F + "test_files_subsample_seed_and_label_noise",
    "data.files.standardize": C + "test_files_source_reads_one_parquet_file_with_split_and_id_columns",
    "data.python.factory": C + "test_python_model_and_python_data_from_user_code_through_the_workflow",
    "data.python.kwargs": C + "test_python_model_and_python_data_from_user_code_through_the_workflow",
    "data.python.seed": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.python.label_noise": S + "test_label_noise_plants_exactly_the_flipped_ids",
    "data.python.subsample_train": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.python.subsample_test": S + "test_subsample_is_seeded_ordered_and_keeps_rows_whole",
    "data.python.standardize": S + "test_channel_standardization_and_tensor_factories_keep_the_image_shape",
    # ---- label noise you know of, and planted on top (gradscope.data.noise) ----
    "data.files.planted_key": N + "test_declared_ids_from_a_file_and_a_key_combine_and_follow_the_subsample",
    "data.files.planted_ids": N + "test_declared_ids_from_a_file_and_a_key_combine_and_follow_the_subsample",
    "data.files.noise.pairs": N + "test_files_noise_is_planted_truth_recorded_in_meta",
    "data.files.noise.matrix": N + "test_a_bad_noise_block_names_the_key",
    "data.python.planted_ids": N + "test_python_and_mnist1d_take_them_too",
    "data.python.noise.pairs": N + "test_python_and_mnist1d_take_them_too",
    "data.python.noise.matrix": N + "test_a_bad_noise_block_names_the_key",
    "data.mnist1d.noise.matrix": N + "test_python_and_mnist1d_take_them_too",
    "data.mnist1d.noise.pairs": N + "test_python_and_mnist1d_take_them_too",
    "data.mnist1d.planted_ids": N + "test_python_and_mnist1d_take_them_too",
    "data.torchvision.noise.matrix": N + "test_torchvision_takes_them_too",
    "data.torchvision.noise.pairs": N + "test_pairs_move_exactly_their_count_of_their_class_and_nothing_else",
    "data.torchvision.planted_ids": N + "test_torchvision_takes_them_too",
    "data.mnist1d.spurious.aligned": P + "test_training_split_has_exactly_the_aligned_count_and_the_other_draws_do_not_move",
    "data.mnist1d.spurious.test": P + "test_test_split_is_random_or_reversed",
    "data.mnist1d.spurious.kind": P + "test_channel_on_images_and_its_limit",
    "data.mnist1d.spurious.size": P + "test_stripe_on_mnist1d_after_standardization",
    "data.mnist1d.spurious.strength": P + "test_stripe_on_mnist1d_after_standardization",
    "data.torchvision.spurious.aligned": P + "test_patch_on_cifar10_through_torchvision",
    "data.torchvision.spurious.test": P + "test_patch_on_cifar10_through_torchvision",
    "data.torchvision.spurious.kind": P + "test_patch_on_cifar10_through_torchvision",
    "data.torchvision.spurious.size": P + "test_patch_on_cifar10_through_torchvision",
    "data.torchvision.spurious.strength": P + "test_patch_on_cifar10_through_torchvision",
    "data.files.spurious.aligned": P + "test_stripe_on_flat_vectors_from_files",
    "data.files.spurious.test": P + "test_stripe_on_flat_vectors_from_files",
    "data.files.spurious.kind": P + "test_stripe_on_flat_vectors_from_files",
    "data.files.spurious.size": P + "test_stripe_on_flat_vectors_from_files",
    "data.files.spurious.strength": P + "test_stripe_on_flat_vectors_from_files",
    "data.python.spurious.aligned": P + "test_patch_on_images_from_a_python_factory",
    "data.python.spurious.test": P + "test_channel_on_images_and_its_limit",
    "data.python.spurious.kind": P + "test_channel_on_images_and_its_limit",
    "data.python.spurious.size": P + "test_patch_on_images_from_a_python_factory",
    "data.python.spurious.strength": P + "test_patch_on_images_from_a_python_factory",
    # ---- model ----
    "model.kind": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "model.channels": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "model.base_width": M + "test_resnet18_and_vgg11_at_full_width_have_the_reference_sizes",
    "model.blocks": C + "test_resnet_with_batchnorm_on_mnist1d_through_the_workflow",
    "model.norm": C + "test_vgg_with_group_norm_on_torchvision_mnist_files_through_the_workflow",
    "model.groups": C + "test_vgg_with_group_norm_on_torchvision_mnist_files_through_the_workflow",
    "model.factory": C + "test_python_model_and_python_data_from_user_code_through_the_workflow",
    "model.kwargs": C + "test_python_model_and_python_data_from_user_code_through_the_workflow",
    "model.init_scale": M + "test_mlp_init_scale",
    "model.depth": W + "test_eigenvectors_saved_and_warm_start_chains_a_runs_curvature_jobs",
    "model.width": W + "test_eigenvectors_saved_and_warm_start_chains_a_runs_curvature_jobs",
    "model.activation": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "model.input_encoding": "tests/test_resources.py::test_parameter_counts_match_the_built_models",
    "model.embed_dim": "tests/test_resources.py::test_parameter_counts_match_the_built_models",
    "model.d_model": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.n_heads": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.d_head": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.d_mlp": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.n_layers": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.layer_norm": C + "test_transformer_with_two_layers_and_layer_norm_on_modular_sub",
    "model.init": "tests/test_nanda_init.py::test_every_tensor_has_the_papers_std_and_zero_mean_and_biases_are_zero",
    # ---- optim ----
    "optim.name": O + "test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay",
    "optim.lr": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.momentum": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.nesterov": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.alpha": O + "test_rmsprop_step_with_its_alpha_eps_and_momentum",
    "optim.weight_decay": O + "test_sgd_momentum_nesterov_and_weight_decay_steps",
    "optim.betas": O + "test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay",
    "optim.eps": O + "test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay",
    "optim.warmup_steps": T + "test_warmup_and_clipping_are_logged",
    "optim.grad_clip": O + "test_the_update_is_clipped_to_grad_clip_only_when_the_gradient_is_longer",
    "optim.schedule.kind": T + "test_schedules",
    "optim.schedule.min_lr_ratio": T + "test_schedules",
    "optim.schedule.step_size": T + "test_schedules",
    "optim.schedule.gamma": T + "test_schedules",
    "optim.schedule.metric": F + "test_plateau_on_test_accuracy_with_its_factor_and_threshold",
    "optim.schedule.factor": F + "test_plateau_on_test_accuracy_with_its_factor_and_threshold",
    "optim.schedule.patience": T + "test_schedules",
    "optim.schedule.threshold": F + "test_plateau_on_test_accuracy_with_its_factor_and_threshold",
    "train.steps": T + "test_training_writes_metrics_and_checkpoints",
    "train.batch_size": C + "test_adam_with_its_betas_and_eps_and_minibatches_of_8",
    "train.loss": C + "test_mse_loss_is_logged_and_measured",
    "train.log_every": T + "test_training_writes_metrics_and_checkpoints",
    "train.early_stopping.metric": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "train.early_stopping.patience": T + "test_early_stopping_ends_training_and_fills_later_checkpoints",
    "train.early_stopping.min_delta": C + "test_cnn_with_gelu_rmsprop_alpha_and_early_stopping",
    "train.dynamics_every": C + "test_mse_loss_is_logged_and_measured",
    "train.checkpoints.every": T + "test_training_writes_metrics_and_checkpoints",
    "train.checkpoints.at": "tests/config/test_config.py::test_checkpoint_steps_include_first_and_last",
    "train.checkpoints.log_spaced": "tests/config/test_config.py::test_checkpoint_steps_include_first_and_last",
    "train.checkpoints.dense.from": L + "test_dense_checkpoints_add_a_window_to_the_main_rule",
    "train.checkpoints.dense.to": L + "test_dense_checkpoints_add_a_window_to_the_main_rule",
    "train.checkpoints.dense.every": L + "test_dense_checkpoints_add_a_window_to_the_main_rule",
    # ---- examples ----
    "examples.proj_dim": W + "test_artifacts_read_back_with_pandas_and_duckdb",
    "examples.proj_dtype": C + "test_projection_in_float16_with_its_own_seed",
    "examples.seed": C + "test_projection_in_float16_with_its_own_seed",
    "examples.batch_size": V + "test_examples_table_matches_vmap_gradients_against_the_training_mean",
    "examples.trainable_only": "tests/grad_rules/test_grad_rules.py::test_frozen_parameters_are_left_out",
    "examples.projection": C + "test_hadamard_projection_and_influence_options",
    # ---- influence ----
    "influence.enabled": C + "test_hadamard_projection_and_influence_options",
    "influence.test_examples": C + "test_hadamard_projection_and_influence_options",
    "influence.top_k": C + "test_hadamard_projection_and_influence_options",
    "influence.seed": C + "test_hadamard_projection_and_influence_options",
    "influence.report_examples": C + "test_hadamard_projection_and_influence_options",
    "influence.test_selection": "tests/test_influence_scale.py::test_compute_influence_misclassified",
    "influence.test_ids": "tests/test_influence_scale.py::test_misclassified_and_explicit_ids",
    "influence.block_size": "tests/test_influence_scale.py::test_compute_influence_scores_the_chosen_test_examples_blockwise",
    # ---- progress ----
    "progress.enabled": "tests/test_progress.py::test_only_modular_add_and_sub_runs_with_progress_enabled_plan_the_stage",
    "progress.key_frequencies": "tests/test_progress.py::test_key_frequencies_from_the_final_or_each_checkpoint",
    "progress.key_frequencies_from": "tests/test_progress.py::test_key_frequencies_from_the_final_or_each_checkpoint",
    # ---- signals ----
    "signals.detectors": C + "test_detector_subset_and_thresholds",
    "signals.cos_rule.threshold": C + "test_detector_subset_and_thresholds",
    "signals.opposing_groups.top_k": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "signals.opposing_groups.n_groups": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
    "signals.opposing_groups.seed": F + "test_opposing_groups_seed_decides_the_clustering",
    "signals.loss_trajectory.window": C + "test_detector_subset_and_thresholds",
    "signals.loss_trajectory.slope_threshold": C + "test_detector_subset_and_thresholds",
    "signals.loss_trajectory.volatility_threshold": C + "test_detector_subset_and_thresholds",
    "signals.cartography.confidence_threshold": C + "test_opposing_features_and_digits_planted_truth_reach_the_signals",
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
    "curvature.batch_size": "tests/curvature/test_microbatches.py::test_compute_curvature_in_micro_batches_equals_one_batch",
    "curvature.seed": C + "test_files_source_reads_one_parquet_file_with_split_and_id_columns",
    "curvature.top_k": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.lanczos_iters": C + "test_curvature_options_turned_off_and_top_k_without_tolerance",
    "curvature.eigenvectors": C + "test_files_source_reads_one_parquet_file_with_split_and_id_columns",
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
    # ---- intervene ----
    "intervene.parent": I + "test_each_grid_point_and_seed_has_a_flagged_and_a_control_run_with_the_parents_settings",
    "intervene.detector": I + "test_derive_data_applies_each_action_to_the_detectors_top_k_at_the_step",
    "intervene.k": I + "test_each_grid_point_and_seed_has_a_flagged_and_a_control_run_with_the_parents_settings",
    "intervene.action": I + "test_derive_data_applies_each_action_to_the_detectors_top_k_at_the_step",
    "intervene.weight": I + "test_derive_data_applies_each_action_to_the_detectors_top_k_at_the_step",
    "intervene.step": I + "test_derive_data_applies_each_action_to_the_detectors_top_k_at_the_step",
    # ---- timeline ----
    "timeline.spike_window": L + "test_spike_margin_and_window_decide_what_a_spike_is",
    "timeline.spike_margin": L + "test_spike_margin_and_window_decide_what_a_spike_is",
    "timeline.link_window": L + "test_build_resolves_link_window_and_correlates_the_loss_with_the_pair",
    "timeline.antiphase_window": L + "test_antiphase_window_and_threshold",
    "timeline.antiphase_threshold": L + "test_antiphase_window_and_threshold",
    "timeline.shuffles": L + "test_shuffled_baseline_matches_uniform_placement",
    "timeline.seed": L + "test_shuffled_baseline_matches_uniform_placement",
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
