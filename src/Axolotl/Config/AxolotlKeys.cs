using System.Collections.Frozen;

namespace Axolotl.Config;

/// <summary>
/// Axolotl's key set and how Axolotl.NET treats the keys it does not implement as typed properties. The names are
/// Axolotl 0.18.0's: its pydantic schema (AxolotlInputConfig and the models it inherits), the argument models of its
/// bundled plugins, and the aliases it accepts (model_type, model_config, model_kwargs, model_revision).
/// </summary>
static class AxolotlKeys
{
    public static readonly FrozenSet<string> All = Words("""
        accelerator_config activation_offloading adam_beta1 adam_beta2 adam_beta3 adam_epsilon adam_epsilon2 adapter
        added_tokens_overrides attn_implementation auto_find_batch_size auto_resume_from_checkpoints axolotl_config_path
        base_model base_model_config batch_flattening batch_size bench_dataset bench_split bf16 bfloat16 bnb_config_kwargs
        center_rewards_coefficient chat_template chat_template_jinja chat_template_kwargs chunked_cross_entropy
        chunked_cross_entropy_num_chunks cls_model_config comet_api_key comet_experiment_config comet_experiment_key
        comet_mode comet_online comet_project_name comet_workspace context_parallel_size cosine_constant_lr_ratio
        cosine_min_lr_ratio cpo_alpha curriculum_sampling cut_cross_entropy dataloader_drop_last dataloader_num_workers
        dataloader_pin_memory dataloader_prefetch_factor dataset_exact_deduplication dataset_keep_in_memory dataset_num_proc
        dataset_prepared_path dataset_processes dataset_shard_idx dataset_shard_num datasets ddp ddp_broadcast_buffers
        ddp_bucket_cap_mb ddp_find_unused_parameters ddp_timeout deepcompile deepspeed default_system_message dense_mixer
        device device_map diffusion dion_lr dion_momentum dion_rank_fraction dion_rank_multiple_of do_bench_eval
        do_causal_lm_eval dp_replicate_size dp_shard_size dpo_beta dpo_generate_during_eval dpo_label_smoothing
        dpo_loss_type dpo_loss_weights dpo_norm_loss dpo_padding_free dpo_use_liger_kernel dpo_use_logits_to_keep
        dpo_use_weighting dsv4_bf16_all dsv4_fp4_grouped_mode dsv4_fp8_lora_kernel dsv4_fp8_nonexpert_mode
        dsv4_shared_mlp_lora_kernel dynamic_checkpoint eaft_alpha eaft_k eager_attention early_stopping_patience ebft
        embedding_lr embedding_lr_scale embeddings_skip_upcast eot_tokens eval_batch_size eval_causal_lm_metrics
        eval_max_new_tokens eval_sample_packing eval_sequence_len eval_steps eval_strategy eval_table_size evals_per_epoch
        evaluation_strategy excess_length_strategy experimental_skip_move_to_device expert_backend expert_parallel_backend
        expert_parallel_fallback_on_unsupported expert_parallel_num_nvl_bytes expert_parallel_num_rdma_bytes
        expert_parallel_size expert_parallel_token_capacity experts_implementation fix_untrained_tokens flash_attention
        flash_attn_cross_entropy flash_attn_d512 flash_attn_fuse_mlp flash_attn_rms_norm flash_optimum flex_attention
        flex_attn_compile_kwargs float16 float32 fp16 fp32_norm_classes fp32_norms fp8 fp8_enable_fsdp_float8_all_gather
        freeze_mm_modules fsdp fsdp_config fsdp_final_state_dict_type fsdp_version fused_attn_kernel gc_collect_steps
        gc_steps gemma4_fp8_nonexpert gemma4_hybrid_attn_impl gemma4_nf4_nonexpert generate_samples generation_do_sample
        generation_max_new_tokens generation_prompt_ratio generation_temperature generation_top_k generation_top_p gptq
        gpu_memory_limit gradient_accumulation_steps gradient_checkpointing gradient_checkpointing_kwargs
        gradio_max_new_tokens gradio_server_name gradio_server_port gradio_share gradio_temperature gradio_title
        greater_is_better grokfast_alpha grokfast_lamb group_by_length hatchery heads_k_stride hf_mlflow_log_artifacts
        hf_use_auth_token hub_model_id hub_revision hub_strategy image_resize_algorithm image_size include_tkps
        include_tokens_per_second is_falcon_derived_model is_llama_derived_model is_mistral_derived_model is_preprocess
        is_qwen_derived_model jagged_restart_anneal_steps jagged_restart_steps jagged_restart_warmup_steps kd_alpha kd_beta
        kd_ce_alpha kd_normalize_topk kd_online_server kd_online_server_base_url kd_online_timeout kd_online_topk
        kd_temperature kd_temperature_min kd_trainer kto_desirable_weight kto_undesirable_weight large_head_attention
        layer_offloading learning_rate liger_cross_entropy liger_fused_linear_cross_entropy liger_glu_activation
        liger_layer_norm liger_rms_norm liger_rms_norm_gated liger_rope liger_swiglu liger_use_token_scaling
        lisa_layers_attribute lisa_n_layers lisa_step_interval llama4_linearized_experts llmcompressor lm_eval_batch_size
        lm_eval_model lm_eval_post_train lm_eval_tasks load_best_model_at_end load_in_4bit load_in_8bit local_rank
        logging_steps lora_alpha lora_alpha_pattern lora_dropout lora_embedding_kernel lora_fan_in_fan_out lora_mlp_kernel
        lora_model_dir lora_modules_to_save lora_o_kernel lora_on_cpu lora_qkv_kernel lora_r lora_rank_pattern
        lora_target_linear lora_target_modules lora_target_parameters loraplus_lr_embedding loraplus_lr_ratio
        loss_watchdog_patience loss_watchdog_threshold low_cpu_mem_usage lr_div_factor lr_groups lr_quadratic_warmup
        lr_scheduler lr_scheduler_kwargs max_grad_norm max_memory max_packed_sequence_len max_prompt_len max_steps
        mean_resizing_embeddings merge_lora merge_method metric_for_best_model micro_batch_size min_sample_len
        mlflow_experiment_name mlflow_run_name mlflow_tracking_uri model_config model_kwargs model_quantization_config
        model_quantization_config_kwargs model_revision model_type moe_bnb_fast moe_dequant_chunk_size moe_grouped_backend
        mora multipack_real_batches neftune_noise_alpha nemo_gym_auto_clone nemo_gym_auto_start nemo_gym_config_paths
        nemo_gym_datasets nemo_gym_dir nemo_gym_enabled nemo_gym_head_port nemo_gym_max_turns nemo_gym_model_name
        nemo_gym_multi_turn nemo_gym_run_timeout nemo_gym_server_timeout nemo_gym_verify_timeout noisy_embedding_alpha
        nonexpert_quantization num_dataset_shards_to_save num_epochs num_generation_samples num_labels nvfp4_merge_aware
        nvfp4_merge_aware_start_step optim_args optim_target_modules optimizer orpo_alpha otel_metrics_host
        otel_metrics_port output_dir overrides_of_model_config overrides_of_model_kwargs pad_to_multiple_of
        pad_to_sequence_len peft peft_autocast_adapter_dtype peft_ensure_weight_tying peft_init_lora_weights
        peft_layer_replication peft_layers_pattern peft_layers_to_transform peft_trainable_token_indices peft_use_dora
        peft_use_rslora plugins pose_max_context_len pose_num_chunks pose_split_on_token_ids precompute_ref_log_probs
        preprocess_iterable pretrain_multipack_attn pretrain_multipack_buffer_size pretraining_dataset
        pretraining_sample_concatenation process_reward_model processor_kwargs processor_type profiler_steps
        profiler_steps_start push_dataset_to_hub qat qgalore_cos_threshold qgalore_gamma_proj qgalore_proj_bits
        qgalore_proj_group_size qgalore_proj_quant qgalore_proj_type qgalore_queue_size qgalore_rank qgalore_scale
        qgalore_update_proj_gap qlora_sharded_model_loading quantization quantize_moe_experts ray_num_workers ray_run_name
        reinit_weights relora relora_cpu_offload relora_prune_method relora_prune_ratio remove_unused_columns
        resize_token_embeddings_to_32x resources_per_worker resume_from_checkpoint revision_of_model reward_model
        ring_attn_func rl rl_beta role_boundaries rope_scaling rpo_alpha s2_attention sage_attention sample_packing
        sample_packing_bin_size sample_packing_eff_est sample_packing_group_size sample_packing_mp_start_method
        sample_packing_sequentially save_first_step save_only_model save_safetensors save_steps save_strategy
        save_total_limit saves_per_epoch scaling_softmax scaling_softmax_bias scaling_softmax_factor sdp_attention
        sdpa_varlen seed selective_checkpointing sequence_len sequence_parallel_degree shrink_embeddings
        shuffle_before_merging_datasets shuffle_merged_datasets simpo_gamma skip_prepare_dataset special_tokens
        spectrum_model_name spectrum_top_fraction streaming streaming_multipack_buffer_size strict swanlab_api_host
        swanlab_api_key swanlab_completion_log_interval swanlab_completion_max_buffer swanlab_description
        swanlab_experiment_name swanlab_lark_secret swanlab_lark_webhook_url swanlab_log_completions swanlab_log_model
        swanlab_mode swanlab_project swanlab_web_host swanlab_workspace tensor_parallel_size test_datasets tf32 tiled_mlp
        tiled_mlp_num_shards tiled_mlp_use_original_mlp tokenizer_config tokenizer_legacy tokenizer_save_jinja_files
        tokenizer_type tokenizer_use_fast tokenizer_use_mistral_common tokens torch_compile torch_compile_backend
        torch_compile_mode torch_compile_options torch_empty_cache_steps torchdistx_path total_num_tokens
        total_supervised_tokens trackio_project_name trackio_run_name trackio_space_id train_on_inputs trainer_cls trl
        trust_remote_code type_of_model unfrozen_parameters use_comet use_dsv4_kernels use_eaft use_glm_dsa_kernels
        use_kernels use_mlflow use_onebitllms use_otel_metrics use_pose use_ray use_scattermoe use_sonicmoe use_swanlab
        use_tensorboard use_trackio use_wandb val_set_size vllm wandb_entity wandb_log_model wandb_mode wandb_name
        wandb_project wandb_run_id wandb_watch warmup_ratio warmup_steps weight_decay world_size xformers_attention
        """);

    /// <summary>Keys of a <c>datasets:</c> or <c>test_datasets:</c> entry (SFT, DPO, KTO, stepwise and synthetic
    /// datasets), plus the user_defined format fields older Axolotl docs put on the entry itself.</summary>
    public static readonly FrozenSet<string> DatasetKeys = Words("""
        chat_template chat_template_jinja conversation data_files drop_system_message ds_type field field_chosen field_human
        field_messages field_model field_rejected field_thinking field_tools input_format input_transform length
        logprobs_field max_completion_length max_input_id message_field_content message_field_role message_field_training
        message_field_training_detail message_property_mappings min_input_id name path preprocess_shards revision roles
        roles_to_train seed sequence_length shards shards_idx skip split split_thinking step_separator temperature
        template_thinking_key text_column train_on_eos train_on_eot train_on_last_step_only trust_remote_code type
        field_system field_instruction field_input field_output format no_input_format system_format system_prompt
        """);

    public static readonly FrozenSet<string> PretrainingDatasetKeys = Words("path name split data_files text_column type skip trust_remote_code");

    /// <summary>Axolotl's legacy attention flags, in its priority order, and the attn_implementation each one means.</summary>
    public static readonly (string Flag, string Implementation)[] LegacyAttentionFlags =
    [
        ("xformers_attention", "xformers"), ("sage_attention", "sage"), ("flex_attention", "flex_attention"),
        ("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"), ("eager_attention", "eager"),
    ];

    /// <summary>The attn_implementation values Axolotl accepts (besides hub-kernel paths, which contain '/').</summary>
    public static readonly FrozenSet<string> AttentionImplementations =
        Words("eager sdpa flash_attention_2 flash_attention_3 flex_attention xformers sage fp8");

    /// <summary>Short forms Axolotl refuses, with the canonical name it asks for.</summary>
    public static readonly FrozenDictionary<string, string> AttentionShortForms =
        new Dictionary<string, string> { ["flash"] = "flash_attention_2", ["flex"] = "flex_attention", ["sdp"] = "sdpa" }.ToFrozenDictionary();

    /// <summary>Optimizers that are AdamW with other state storage or a fused/paged GPU kernel: adamw_torch runs instead.</summary>
    public static readonly FrozenSet<string> AdamWVariants = Words("""
        paged_adamw_32bit adamw_torch_4bit adamw_torch_8bit adamw_apex_fused
        adamw_torch_xla adamw_torch_npu_fused ao_adamw_4bit ao_adamw_8bit ao_adamw_fp8
        """);

    /// <summary>bitsandbytes' Lion with 8-bit or paged state: lion_32bit (the same update in fp32 state) runs instead.</summary>
    public static readonly FrozenSet<string> LionVariants = Words("lion_8bit paged_lion_32bit paged_lion_8bit");

    /// <summary>Plugins that only swap in faster GPU kernels (by class name).</summary>
    public static readonly FrozenSet<string> SpeedOnlyPlugins = Words("LigerPlugin CutCrossEntropyPlugin KernelsPlugin");

    const string Kernel = "only swaps in a faster GPU kernel; PyTorch's standard ops run instead (same math)";
    const string Memory = "only saves GPU memory; activations are kept for the backward pass instead (same gradients)";
    const string OneProcess = "spreads training over several GPUs; Axolotl.NET trains unsharded in one process (the math of one GPU)";
    const string Placement = "is multi-GPU placement or memory housekeeping; the whole model runs in this process on one device (the 'device' key)";
    const string DataWorkers = "only sets parallelism of data loading; Axolotl.NET tokenizes with its own threads";
    const string NotInSchema = "is not in Axolotl's schema, which drops it, so it has no effect there either; ignored";

    /// <summary>
    /// Keys that only tune speed or memory on other hardware, or have no effect on a local single-process run: accepted,
    /// and each set one gets a one-line warning saying what runs instead. (optimizer, attn_implementation, the legacy
    /// attention flags, bfloat16 and plugins depend on their value and are handled in ConfigLoader.)
    /// </summary>
    public static readonly FrozenDictionary<string, string> Warned = new Dictionary<string, string>
    {
        // kernels
        ["flash_attn_cross_entropy"] = Kernel, ["flash_attn_fuse_mlp"] = Kernel, ["fused_attn_kernel"] = Kernel,
        ["flash_optimum"] = Kernel, ["large_head_attention"] = Kernel, ["sdpa_varlen"] = Kernel,
        ["flex_attn_compile_kwargs"] = Kernel, ["gemma4_hybrid_attn_impl"] = Kernel, ["use_kernels"] = Kernel,
        ["use_scattermoe"] = Kernel, ["use_sonicmoe"] = Kernel,
        ["liger_rope"] = Kernel, ["liger_rms_norm"] = Kernel, ["liger_rms_norm_gated"] = Kernel, ["liger_layer_norm"] = Kernel,
        ["liger_swiglu"] = Kernel, ["liger_glu_activation"] = Kernel, ["liger_cross_entropy"] = Kernel,
        ["liger_fused_linear_cross_entropy"] = Kernel,
        ["lora_mlp_kernel"] = Kernel, ["lora_qkv_kernel"] = Kernel, ["lora_o_kernel"] = Kernel, ["lora_embedding_kernel"] = Kernel,
        ["cut_cross_entropy"] = "only saves GPU memory; the loss is computed chunk by chunk here anyway (same math)",
        ["chunked_cross_entropy"] = "only saves GPU memory; the loss is computed chunk by chunk here anyway (same math)",
        ["chunked_cross_entropy_num_chunks"] = "only saves GPU memory; the loss is computed chunk by chunk here anyway (same math)",
        ["batch_flattening"] = "only speeds up GPU attention; batches are padded instead and padding is masked (same loss)",
        ["torch_compile"] = "only speeds up GPUs; the model runs eagerly (same math)",
        ["torch_compile_backend"] = "only speeds up GPUs; the model runs eagerly (same math)",
        ["torch_compile_mode"] = "only speeds up GPUs; the model runs eagerly (same math)",
        ["torch_compile_options"] = "only speeds up GPUs; the model runs eagerly (same math)",
        ["deepcompile"] = "only speeds up GPUs; the model runs eagerly (same math)",
        // precision
        ["tf32"] = "is an NVIDIA matmul mode; matmuls run in fp32, or bf16 as 'bf16' says",
        ["fp16"] = "is GPU mixed precision; precision follows 'bf16' instead (bf16 compute where the CPU has it natively, else fp32)",
        ["float16"] = "is GPU half precision; precision follows 'bf16' instead (bf16 compute where the CPU has it natively, else fp32)",
        // memory
        ["gradient_checkpointing_kwargs"] = "only tunes how PyTorch recomputes layers (use_reentrant); gradient_checkpointing recomputes each decoder layer here (same gradients)",
        ["activation_offloading"] = Memory, ["layer_offloading"] = Memory,
        ["tiled_mlp"] = Memory, ["tiled_mlp_num_shards"] = Memory, ["tiled_mlp_use_original_mlp"] = Memory,
        ["low_cpu_mem_usage"] = Placement, ["device_map"] = Placement, ["gpu_memory_limit"] = Placement,
        ["experimental_skip_move_to_device"] = Placement, ["torch_empty_cache_steps"] = Placement,
        ["gc_steps"] = Placement, ["gc_collect_steps"] = Placement,
        // distribution
        ["fsdp"] = OneProcess, ["fsdp_config"] = OneProcess,
        ["fsdp_version"] = OneProcess, ["fsdp_final_state_dict_type"] = OneProcess, ["ddp"] = OneProcess,
        ["ddp_timeout"] = OneProcess, ["ddp_bucket_cap_mb"] = OneProcess, ["ddp_broadcast_buffers"] = OneProcess,
        ["ddp_find_unused_parameters"] = OneProcess, ["local_rank"] = OneProcess, ["world_size"] = OneProcess,
        ["dp_shard_size"] = OneProcess, ["dp_replicate_size"] = OneProcess, ["tensor_parallel_size"] = OneProcess,
        ["context_parallel_size"] = OneProcess, ["sequence_parallel_degree"] = OneProcess, ["heads_k_stride"] = OneProcess,
        ["ring_attn_func"] = OneProcess, ["use_ray"] = OneProcess, ["ray_num_workers"] = OneProcess,
        ["ray_run_name"] = OneProcess, ["resources_per_worker"] = OneProcess,
        // data loading
        ["dataset_num_proc"] = DataWorkers, ["dataset_processes"] = DataWorkers, ["dataset_keep_in_memory"] = DataWorkers,
        ["dataloader_num_workers"] = DataWorkers, ["dataloader_pin_memory"] = DataWorkers, ["dataloader_prefetch_factor"] = DataWorkers,
        ["sample_packing_mp_start_method"] = DataWorkers,
        // no effect on a local run
        ["hf_use_auth_token"] = "is for the Hugging Face Hub; models and datasets are read from local paths",
        ["trust_remote_code"] = "lets transformers run a model's own Python; none runs here: the architecture must be one Axolotl.NET implements",
        ["include_tkps"] = "has no effect here: tokens_per_second is always logged",
        ["include_tokens_per_second"] = "has no effect here: tokens_per_second is always logged",
        ["is_llama_derived_model"] = "has no effect here: the architecture is read from config.json",
        ["is_mistral_derived_model"] = "has no effect here: the architecture is read from config.json",
        ["is_falcon_derived_model"] = "has no effect here: the architecture is read from config.json",
        ["is_qwen_derived_model"] = "has no effect here: the architecture is read from config.json",
        ["optim_args"] = "is read by transformers only for optimizers that take extra arguments (GaLore, AnyPrecision, AdEMAMix, bnb RMSprop); the optimizers implemented here ignore it there too",
        // in Axolotl's own example configs, but not in its schema
        ["adam_eps"] = NotInSchema + " (the key is adam_epsilon)", ["debug"] = NotInSchema + " (the CLI's --debug is what Axolotl reads)",
        ["gptq_disable_exllama"] = NotInSchema, ["gptq_groupsize"] = NotInSchema, ["gptq_model_v1"] = NotInSchema,
        ["test_value"] = NotInSchema,
    }.ToFrozenDictionary();

    const string Wandb = "W&B's run files are written by its own client and service, whose offline format is not specified well enough to write faithfully; log with use_tensorboard: true or mlflow_tracking_uri (a server, or a file: store that `mlflow ui` reads) instead";

    /// <summary>
    /// Keys refused on purpose, with the hardware or library each needs that a CPU (or a GPU through libtorch alone) does
    /// not have: the refusal says why, so nobody waits for them (README, "Refused on purpose").
    /// </summary>
    public static readonly FrozenDictionary<string, string> RefusedOnPurpose = new Dictionary<string, string>
    {
        ["use_wandb"] = Wandb, ["wandb_project"] = Wandb, ["wandb_entity"] = Wandb, ["wandb_name"] = Wandb, ["wandb_run_id"] = Wandb,
        ["wandb_mode"] = Wandb, ["wandb_watch"] = Wandb, ["wandb_log_model"] = Wandb,
        ["qat"] = "quantization-aware training fakes torchao's low-bit (int4/int8/fp8) GPU kernels in the forward pass; without torchao and those kernels it cannot be reproduced (QLoRA with load_in_4bit trains on an NF4 base here)",
        ["fp8"] = "FP8 training needs FP8 tensor cores (NVIDIA Hopper or Ada) and torchao's float8 layers, which libtorch alone does not provide; bf16 trains instead when you remove it",
        ["fp8_enable_fsdp_float8_all_gather"] = "FP8 training needs FP8 tensor cores (NVIDIA Hopper or Ada), torchao's float8 layers and FSDP2",
        ["nvfp4_merge_aware"] = "NVFP4 is a 4-bit float format computed by NVIDIA Blackwell tensor cores (and their kernels); no CPU or earlier GPU runs it",
        ["nvfp4_merge_aware_start_step"] = "NVFP4 is a 4-bit float format computed by NVIDIA Blackwell tensor cores (and their kernels); no CPU or earlier GPU runs it",
        ["gptq"] = "a GPTQ checkpoint runs through the GPU kernels of auto-gptq/gptqmodel (exllama, marlin); quantize a plain checkpoint with load_in_4bit (QLoRA) or load_in_8bit instead",
        ["llmcompressor"] = "LLM Compressor (vLLM's llmcompressor library) applies its own sparsity and quantization recipes and saves compressed-tensors checkpoints for vLLM; neither the library nor that format is ported",
    }.ToFrozenDictionary();

    /// <summary>Older Axolotl names, read as the current key with a warning.</summary>
    public static readonly FrozenDictionary<string, string> Renamed =
        new Dictionary<string, string> { ["random_init_weights"] = "reinit_weights", ["overrides_of_model_config"] = "model_config", ["pretrain_multipack_buffer_size"] = "streaming_multipack_buffer_size" }.ToFrozenDictionary();

    static FrozenSet<string> Words(string text) =>
        text.Split((char[])[' ', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries).ToFrozenSet(StringComparer.Ordinal);
}
