// collx-calibrate: measures the cost model's alpha, beta and gamma for the in-process
// transport on this machine, prints them, and saves them where the automatic choice of
// algorithm finds them (collx::model_file_path(), or --out FILE; --no-save to only print).

#include <collx/calibrate.hpp>
#include <collx/collx.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

namespace {

// To stdout, exit 0, when asked for (-h, --help); to stderr, exit 2, after a bad argument.
int usage(std::FILE* to) {
  std::fprintf(to,
               "usage: collx-calibrate [--out FILE] [--no-save] [--runs N]\n"
               "  measures alpha, beta and gamma of the in-process transport and saves them to FILE\n"
               "  (default: %s), where the automatic choice of algorithm reads them\n",
               collx::model_file_path().c_str());
  return to == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = collx::model_file_path();
  bool save = true;
  int runs = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      return usage(stdout);
    } else if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
      out = argv[++i];
    } else if (std::strcmp(argv[i], "--no-save") == 0) {
      save = false;
    } else if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else {
      return usage(stderr);
    }
  }
  collx::cost_params m;
  try {
    m = collx::calibrate_local(runs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collx-calibrate: %s\n", e.what());
    return 1;
  }
  std::printf("# collx-calibrate: in-process transport, medians of %d runs\n", runs);
  std::printf("alpha %.3f us per message\n", m.alpha * 1e6);
  std::printf("beta  %.3f GB/s per link (%.4g s/B)\n", 1e-9 / m.beta, m.beta);
  std::printf("gamma %.3f GB/s reduced (f32 sum, %.4g s/B)\n", 1e-9 / m.gamma, m.gamma);
  if (save) {
    if (!collx::write_model(out, m)) {
      std::fprintf(stderr, "collx-calibrate: cannot write %s\n", out.c_str());
      return 1;
    }
    std::printf("saved to %s\n", out.c_str());
  }
  return 0;
}
