// Data-parallel training of a small multi-layer perceptron. Every rank holds a replica
// of the model and trains on its own shard of a synthetic classification set; after
// each step the gradients, packed into one flat buffer as DDP's buckets are, are
// averaged across ranks with one all-reduce, so every replica takes the same step.
// At the end the program checks that every rank holds bitwise-identical weights and
// that the accuracy passed a threshold, and fails otherwise.
//
//   build/collx-run -n 3 build/examples/data_parallel_training [epochs]   (processes)
//   build/examples/data_parallel_training [ranks] [epochs]                (threads)
//
// Under a launcher (collx-run, mpirun, srun, torchrun-style environment) each process
// is one rank and the communicator comes from init_from_env(); the final check gathers
// every rank's weights to every rank. Without one, the ranks are threads of this process
// over the in-process transport.

#include <collx/collx.hpp>
#include <collx/launch/init.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

constexpr int features = 8;
constexpr int hidden = 32;
constexpr int classes = 3;
constexpr int samples_per_rank = 512;
constexpr int batch = 32;
constexpr float learning_rate = 0.1f;
constexpr double accuracy_threshold = 0.85;  // chance is 1/3; the blobs overlap, so 100% is out of reach

// Synthetic data: three Gaussian blobs in 8 dimensions; every rank draws its own shard.
struct dataset {
  std::vector<float> x;
  std::vector<int> y;
};

dataset make_shard(int rank, int n) {
  std::mt19937 gen(1234u + static_cast<unsigned>(rank));
  std::normal_distribution<float> noise(0.0f, 1.3f);
  std::uniform_int_distribution<int> label(0, classes - 1);
  dataset d;
  for (int i = 0; i < n; ++i) {
    const int c = label(gen);
    d.y.push_back(c);
    for (int f = 0; f < features; ++f) d.x.push_back((f % classes == c ? 1.5f : -0.5f) + noise(gen));
  }
  return d;
}

// The model's parameters live in one flat buffer; gradients have the same layout, so one
// all-reduce averages all of them (one bucket).
struct layout {
  static constexpr std::size_t w1 = 0;
  static constexpr std::size_t b1 = w1 + features * hidden;
  static constexpr std::size_t w2 = b1 + hidden;
  static constexpr std::size_t b2 = w2 + hidden * classes;
  static constexpr std::size_t size = b2 + classes;
};

// Forward and backward for one sample; adds the gradient into g, returns the prediction.
int step(const std::vector<float>& w, const float* x, int y, std::vector<float>& g, float scale) {
  float h[hidden];
  for (int j = 0; j < hidden; ++j) {
    float a = w[layout::b1 + static_cast<std::size_t>(j)];
    for (int f = 0; f < features; ++f) a += w[layout::w1 + static_cast<std::size_t>(f * hidden + j)] * x[f];
    h[j] = a > 0 ? a : 0;  // ReLU
  }
  float logits[classes];
  float top = -1e30f;
  for (int c = 0; c < classes; ++c) {
    float a = w[layout::b2 + static_cast<std::size_t>(c)];
    for (int j = 0; j < hidden; ++j) a += w[layout::w2 + static_cast<std::size_t>(j * classes + c)] * h[j];
    logits[c] = a;
    top = std::max(top, a);
  }
  float sum = 0;
  for (float& l : logits) sum += (l = std::exp(l - top));
  int pred = 0;
  for (int c = 0; c < classes; ++c) {
    logits[c] /= sum;  // softmax probabilities
    if (logits[c] > logits[pred]) pred = c;
  }
  if (scale == 0) return pred;
  float dh[hidden] = {};
  for (int c = 0; c < classes; ++c) {
    const float d = (logits[c] - (c == y ? 1.0f : 0.0f)) * scale;  // cross-entropy gradient
    g[layout::b2 + static_cast<std::size_t>(c)] += d;
    for (int j = 0; j < hidden; ++j) {
      g[layout::w2 + static_cast<std::size_t>(j * classes + c)] += d * h[j];
      dh[j] += d * w[layout::w2 + static_cast<std::size_t>(j * classes + c)];
    }
  }
  for (int j = 0; j < hidden; ++j) {
    if (h[j] <= 0) continue;
    g[layout::b1 + static_cast<std::size_t>(j)] += dh[j];
    for (int f = 0; f < features; ++f)
      g[layout::w1 + static_cast<std::size_t>(f * hidden + j)] += dh[j] * x[f];
  }
  return pred;
}

struct outcome {
  std::vector<float> weights;
  double accuracy = 0;
};

// One rank's training run.
outcome train(collx::communicator& comm, int epochs) {
  const int r = comm.rank();
  const dataset data = make_shard(r, samples_per_rank);
  // The same initial weights on every rank: drawn from one seed (a real job would
  // broadcast rank 0's).
  std::vector<float> w(layout::size);
  std::mt19937 init(42);
  std::normal_distribution<float> dist(0.0f, 0.3f);
  for (float& v : w) v = dist(init);
  std::vector<float> grad(layout::size);
  double accuracy = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    double loss_proxy = 0;
    for (int start = 0; start < samples_per_rank; start += batch) {
      std::fill(grad.begin(), grad.end(), 0.0f);
      for (int i = start; i < start + batch; ++i) {
        const int pred = step(w, &data.x[static_cast<std::size_t>(i * features)],
                              data.y[static_cast<std::size_t>(i)], grad, 1.0f / batch);
        loss_proxy += pred != data.y[static_cast<std::size_t>(i)];
      }
      comm.all_reduce(grad, collx::reduce_op::avg);  // the bucket: every gradient at once
      for (std::size_t k = 0; k < w.size(); ++k) w[k] -= learning_rate * grad[k];
    }
    // Accuracy over all shards: a sum of per-rank counts.
    std::vector<std::int64_t> counts{0, samples_per_rank};
    for (int i = 0; i < samples_per_rank; ++i) {
      counts[0] += step(w, &data.x[static_cast<std::size_t>(i * features)], 0, grad, 0.0f) ==
                   data.y[static_cast<std::size_t>(i)];
    }
    comm.all_reduce(counts, collx::reduce_op::sum);
    accuracy = static_cast<double>(counts[0]) / static_cast<double>(counts[1]);
    if (comm.rank() == 0) {
      std::printf("epoch %d: training error rate on rank 0's shard %.3f, accuracy over all shards %.3f\n",
                  epoch + 1, loss_proxy / samples_per_rank, accuracy);
    }
  }
  return {std::move(w), accuracy};
}

int report(const std::vector<std::vector<float>>& weights, double accuracy) {
  bool identical = true;
  for (std::size_t r = 1; r < weights.size(); ++r) {
    identical =
        identical && std::memcmp(weights[r].data(), weights[0].data(), layout::size * sizeof(float)) == 0;
  }
  std::printf("weights bitwise identical on all %zu ranks: %s\n", weights.size(), identical ? "yes" : "NO");
  std::printf("final accuracy %.3f (threshold %.2f): %s\n", accuracy, accuracy_threshold,
              accuracy >= accuracy_threshold ? "passed" : "FAILED");
  return identical && accuracy >= accuracy_threshold ? 0 : 1;
}

// One rank per process: every rank gathers every rank's weights and checks them.
int run_process(int epochs) {
  collx::communicator comm = collx::init_from_env();
  const outcome o = train(comm, epochs);
  std::vector<float> all(layout::size * static_cast<std::size_t>(comm.size()));
  comm.all_gather(o.weights, all);
  std::vector<std::vector<float>> weights;
  for (int r = 0; r < comm.size(); ++r) {
    const auto at = all.begin() + static_cast<std::ptrdiff_t>(layout::size * static_cast<std::size_t>(r));
    weights.emplace_back(at, at + static_cast<std::ptrdiff_t>(layout::size));
  }
  return report(weights, o.accuracy);  // on every rank: each one fails the job if it sees a difference
}

}  // namespace

int main(int argc, char** argv) {
  if (collx::launch_from_env().launcher != "none") {
    const int epochs = argc > 1 ? std::atoi(argv[1]) : 5;
    if (epochs < 1) {
      std::fprintf(stderr, "usage: collx-run -n N data_parallel_training [epochs>=1]\n");
      return 2;
    }
    return run_process(epochs);
  }
  const int p = argc > 1 ? std::atoi(argv[1]) : 3;
  const int epochs = argc > 2 ? std::atoi(argv[2]) : 5;
  if (p < 1 || epochs < 1) {
    std::fprintf(stderr, "usage: data_parallel_training [ranks>=1] [epochs>=1]\n");
    return 2;
  }
  collx::local_world world(p);
  std::vector<outcome> out(static_cast<std::size_t>(p));
  std::vector<std::thread> ranks;
  for (int r = 0; r < p; ++r) {
    ranks.emplace_back([&, r] {
      collx::communicator comm(world.transport(r));
      out[static_cast<std::size_t>(r)] = train(comm, epochs);
    });
  }
  for (auto& t : ranks) t.join();
  std::vector<std::vector<float>> weights;
  for (auto& o : out) weights.push_back(o.weights);
  return report(weights, out[0].accuracy);
}
