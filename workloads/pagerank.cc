// PageRank: the frontend generates a power-law graph as an edge list, the
// backend builds a CSR of in-edges and iterates, the frontend reads the top
// nodes from the ranks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "pagerank.h"
#include "workloads_internal.h"

namespace rocket::workloads {
namespace {

constexpr uint32_t kRequestMagic = 0x4b4e5250;   // "PRNK"
constexpr uint32_t kResponseMagic = 0x53525250;  // "PRRS"
constexpr uint64_t kMaxNodes = uint64_t{1} << 28;
constexpr uint64_t kMaxIterations = 1000;
constexpr uint64_t kTop = 10;
constexpr double kDamping = 0.85;

struct RankedNode {
  uint32_t id;
  float rank;
};

}  // namespace

Result<std::vector<float>> pagerank(uint32_t nodes, std::span<const uint32_t> edge_pairs, uint32_t iterations) {
  if (nodes == 0) return invalid_argument("pagerank: a graph needs at least one node");
  if (edge_pairs.size() % 2 != 0) return invalid_argument("pagerank: odd number of edge endpoints");
  const size_t m = edge_pairs.size() / 2;
  // CSR of in-edges: offsets by destination, sources in order.
  std::vector<uint32_t> out_degree(nodes, 0);
  std::vector<uint64_t> offsets(size_t{nodes} + 1, 0);
  for (size_t e = 0; e < m; ++e) {
    uint32_t src = edge_pairs[2 * e], dst = edge_pairs[2 * e + 1];
    if (src >= nodes || dst >= nodes) {
      return invalid_argument("pagerank: edge " + std::to_string(e) + " (" + std::to_string(src) + " -> " +
                              std::to_string(dst) + ") names a node outside [0, " + std::to_string(nodes) + ")");
    }
    ++out_degree[src];
    ++offsets[size_t{dst} + 1];
  }
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
  std::vector<uint32_t> sources(m);
  {
    std::vector<uint64_t> fill(offsets.begin(), offsets.end() - 1);
    for (size_t e = 0; e < m; ++e) sources[fill[edge_pairs[2 * e + 1]]++] = edge_pairs[2 * e];
  }
  const double n = nodes;
  std::vector<double> rank(nodes, 1.0 / n), contrib(nodes), next(nodes);
  for (uint32_t it = 0; it < iterations; ++it) {
    double dangling = 0;
    for (uint32_t u = 0; u < nodes; ++u) {
      if (out_degree[u] == 0) {
        dangling += rank[u];
        contrib[u] = 0;
      } else {
        contrib[u] = rank[u] / out_degree[u];
      }
    }
    const double base = (1.0 - kDamping) / n + kDamping * dangling / n;
    for (uint32_t v = 0; v < nodes; ++v) {
      double sum = 0;
      for (uint64_t k = offsets[v]; k < offsets[v + 1]; ++k) sum += contrib[sources[k]];
      next[v] = base + kDamping * sum;
    }
    rank.swap(next);
  }
  return std::vector<float>(rank.begin(), rank.end());
}

namespace {

class PagerankModel final : public Model {
 public:
  Result<size_t> process(std::span<const std::byte> request, const ResponseAlloc& alloc) const override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(request, kRequestMagic, "pagerank request"));
    const uint64_t nodes = h.dims[0], edges = h.dims[1], iterations = h.dims[2];
    if (nodes == 0 || nodes > kMaxNodes) {
      return invalid_argument("pagerank request: " + std::to_string(nodes) + " nodes (1 to 2^28)");
    }
    if (iterations == 0 || iterations > kMaxIterations) {
      return invalid_argument("pagerank request: " + std::to_string(iterations) + " iterations (1 to 1000)");
    }
    ROCKET_ASSIGN_OR_RETURN(uint64_t edge_bytes, checked_product({edges, 2, sizeof(uint32_t)}, "pagerank request"));
    if (request.size() - sizeof(WireHeader) != edge_bytes) {
      return invalid_argument("pagerank request: " + std::to_string(edges) + " edges need " +
                              std::to_string(edge_bytes) + " bytes after the header, got " +
                              std::to_string(request.size() - sizeof(WireHeader)));
    }
    // The payload sits in shared memory at an 8-byte aligned offset (header
    // of 40 bytes after a 64-byte aligned block), so uint32 access is aligned.
    const auto* pairs = reinterpret_cast<const uint32_t*>(request.data() + sizeof(WireHeader));
    ROCKET_ASSIGN_OR_RETURN(std::vector<float> ranks,
                            pagerank(static_cast<uint32_t>(nodes), {pairs, edges * 2}, static_cast<uint32_t>(iterations)));
    const uint64_t top = std::min<uint64_t>(kTop, nodes);
    const size_t bytes = sizeof(WireHeader) + nodes * sizeof(float) + top * sizeof(RankedNode);
    ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(bytes));
    write_header(out, WireHeader{.magic = kResponseMagic, .version = 1, .dims = {nodes, top, 0, 0}});
    std::memcpy(out.data() + sizeof(WireHeader), ranks.data(), nodes * sizeof(float));
    // Post-processing on the backend: the top nodes by rank.
    std::vector<uint32_t> order(nodes);
    std::iota(order.begin(), order.end(), 0u);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(),
                      [&](uint32_t a, uint32_t b) { return ranks[a] > ranks[b] || (ranks[a] == ranks[b] && a < b); });
    auto* best = out.data() + sizeof(WireHeader) + nodes * sizeof(float);
    for (uint64_t i = 0; i < top; ++i) {
      RankedNode r{order[i], ranks[order[i]]};
      std::memcpy(best + i * sizeof(RankedNode), &r, sizeof(r));
    }
    return bytes;
  }
};

class PagerankFrontend final : public Frontend {
 public:
  explicit PagerankFrontend(const Scale& s)
      : seed_(s.seed), nodes_(scaled(80'000, s, 16)), edges_(scaled(10'000'000, s, 64)) {}

  size_t request_bytes() const noexcept override { return sizeof(WireHeader) + edges_ * 2 * sizeof(uint32_t); }
  size_t max_response_bytes() const noexcept override {
    return sizeof(WireHeader) + nodes_ * sizeof(float) + std::min<uint64_t>(kTop, nodes_) * sizeof(RankedNode);
  }

  void make_request(uint64_t i, std::span<std::byte> out) override {
    write_header(out, WireHeader{.magic = kRequestMagic, .version = 1, .dims = {nodes_, edges_, 20, 0}});
    auto* pairs = reinterpret_cast<uint32_t*>(out.data() + sizeof(WireHeader));
    SplitMix rng(seed_ * 1000003 + i);
    for (uint64_t e = 0; e < edges_; ++e) {
      // Sources uniform; destinations power-law (a few nodes get most links).
      uint64_t r = rng.next();
      double u = static_cast<double>(r >> 11) * 0x1.0p-53;
      pairs[2 * e] = static_cast<uint32_t>((r & 0xffffffffu) % nodes_);
      pairs[2 * e + 1] = static_cast<uint32_t>(static_cast<double>(nodes_) * u * u * u);
    }
  }

  Status consume(std::span<const std::byte> response) override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(response, kResponseMagic, "pagerank response"));
    const uint64_t nodes = h.dims[0], top = h.dims[1];
    if (nodes != nodes_ || top != std::min<uint64_t>(kTop, nodes_)) {
      return data_loss("pagerank response: " + std::to_string(nodes) + " nodes / top " + std::to_string(top) +
                       ", expected " + std::to_string(nodes_));
    }
    if (response.size() != max_response_bytes()) return data_loss("pagerank response: wrong length");
    const auto* ranks = reinterpret_cast<const float*>(response.data() + sizeof(WireHeader));
    double sum = 0;
    for (uint64_t v = 0; v < nodes; ++v) {
      if (!(ranks[v] >= 0.0f) || !std::isfinite(ranks[v])) return data_loss("pagerank response: invalid rank");
      sum += ranks[v];
    }
    if (std::fabs(sum - 1.0) > 1e-3) return data_loss("pagerank response: ranks sum to " + std::to_string(sum));
    const auto* best = response.data() + sizeof(WireHeader) + nodes * sizeof(float);
    summary_ = "top nodes:";
    for (uint64_t i = 0; i < top; ++i) {
      RankedNode r;
      std::memcpy(&r, best + i * sizeof(RankedNode), sizeof(r));
      if (r.id >= nodes || r.rank != ranks[r.id]) return data_loss("pagerank response: top list disagrees with ranks");
      if (i < 3) summary_ += " " + std::to_string(r.id) + " (" + std::to_string(r.rank) + ")";
    }
    return ok_status();
  }

  std::string summary() const override { return summary_; }

 private:
  uint64_t seed_, nodes_, edges_;
  std::string summary_;
};

class PagerankWorkload final : public Workload {
 public:
  std::string_view name() const noexcept override { return "pagerank"; }
  std::string_view description() const noexcept override { return kPagerankDescription; }
  Result<std::unique_ptr<Model>> start_backend(const Scale&) const override {
    return std::unique_ptr<Model>(std::make_unique<PagerankModel>());
  }
  std::unique_ptr<Frontend> frontend(const Scale& s) const override { return std::make_unique<PagerankFrontend>(s); }
};

}  // namespace

const Workload& pagerank_workload() {
  static const PagerankWorkload w;
  return w;
}

}  // namespace rocket::workloads
