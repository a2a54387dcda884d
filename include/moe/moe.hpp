// moe — the one entry header. Include this; everything public is reachable from here
// (moe/testing/ is not included: it is for tests of user code).
#pragma once

#include "moe/version.hpp"

#include "moe/concepts.hpp"
#include "moe/errors.hpp"
#include "moe/param_bank.hpp"
#include "moe/parameters.hpp"
#include "moe/random.hpp"
#include "moe/routing.hpp"
#include "moe/types.hpp"

#include "moe/experts/activations.hpp"
#include "moe/experts/ffn.hpp"
#include "moe/experts/gated.hpp"
#include "moe/experts/linear.hpp"
#include "moe/experts/packed_expert.hpp"

#include "moe/gating/capacity.hpp"
#include "moe/gating/dense_gate.hpp"
#include "moe/gating/expert_choice_gate.hpp"
#include "moe/gating/top_k_gate.hpp"

// Losses
#include "moe/loss/bias_update.hpp"
#include "moe/loss/importance_load.hpp"
#include "moe/loss/load_balancing.hpp"
#include "moe/loss/mixture.hpp"
#include "moe/loss/router_z_loss.hpp"
#include "moe/loss/sequence_balance.hpp"

#include "moe/dispatch/expert_batch.hpp"
#include "moe/dispatch/local_exchange.hpp"
#include "moe/dispatch/runner.hpp"

#include "moe/layer/layer_cache.hpp"
#include "moe/layer/routing_stats.hpp"
#include "moe/layer/shared_experts.hpp"
#include "moe/layer/sparse_moe.hpp"

// Training
#include "moe/train/adam.hpp"
#include "moe/train/sgd.hpp"

// I/O
#include "moe/io/checkpoint.hpp"
#include "moe/io/dtype.hpp"
#include "moe/io/layer_file.hpp"
#include "moe/io/npy.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/io/safetensors_writer.hpp"
