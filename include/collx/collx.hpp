#pragma once

// Everything in collx that needs neither MPI nor CUDA.

#include "collx/algorithms/ring.hpp"
#include "collx/algorithms/select.hpp"
#include "collx/communicator.hpp"
#include "collx/config.hpp"
#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"
#include "collx/core/request.hpp"
#include "collx/exec/host.hpp"
#include "collx/schedule/cost.hpp"
#include "collx/schedule/schedule.hpp"
#include "collx/schedule/verify.hpp"
#include "collx/schedule/walk.hpp"
#include "collx/transport/concept.hpp"
#include "collx/transport/local.hpp"
#include "collx/version.hpp"
