// Each workload's result against an independent small reference, its
// rejection of malformed requests and responses, and one workload served
// end to end through a real Server and Client.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "pagerank.h"
#include "rocket/rocket.h"
#include "workload.h"
#ifdef ROCKET_HAVE_XGBOOST
#include "xgboost_model.h"
#endif
#ifdef ROCKET_HAVE_FAISS
#include "vector_search.h"
#endif
#ifdef ROCKET_HAVE_TORCH
#include "mobilenet.h"
#endif

namespace rocket::workloads {
namespace {

// Runs `model` on `request` with a vector as the response buffer.
Result<std::vector<std::byte>> process(const Model& model, std::span<const std::byte> request) {
  std::vector<std::byte> out;
  ROCKET_ASSIGN_OR_RETURN(size_t n, model.process(request, [&out](size_t bytes) -> Result<std::span<std::byte>> {
    out.resize(bytes);
    return std::span<std::byte>(out);
  }));
  out.resize(n);
  return out;
}

std::vector<std::byte> request_of(Frontend& fe, uint64_t i) {
  std::vector<std::byte> req(fe.request_bytes());
  fe.make_request(i, req);
  return req;
}

const Workload& workload(std::string_view name) {
  auto w = find_workload(name);
  EXPECT_TRUE(w.ok()) << w.status().to_string();
  return **w;
}

// One request of workload `name` at `scale`, built by its frontend and run
// through its model (the response is not consumed yet).
struct OneRequest {
  std::unique_ptr<Model> model;
  std::unique_ptr<Frontend> fe;
  std::vector<std::byte> req, resp;
};

void run_one(std::string_view name, const Scale& s, uint64_t i, OneRequest* out) {
  auto model = workload(name).start_backend(s);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  out->model = std::move(*model);
  out->fe = workload(name).frontend(s);
  out->req = request_of(*out->fe, i);
  auto resp = process(*out->model, out->req);
  ASSERT_TRUE(resp.ok()) << resp.status().to_string();
  out->resp = std::move(*resp);
}

TEST(Registry, ListsTheFourWorkloadsAndRejectsUnknownNames) {
  std::vector<std::string> names;
  for (const Workload* w : all_workloads()) names.emplace_back(w->name());
  EXPECT_EQ(names, (std::vector<std::string>{"mobilenetv2", "xgboost", "pagerank", "vector_search"}));
  auto bad = find_workload("resnet");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
}

// A large block freed by one request serves the next request's allocation
// without its pages being faulted in again (glibc would otherwise unmap it on
// free and map a fresh one). Sanitizers bring their own allocator, which
// ignores mallopt: the test then skips, and the release run in
// scripts/test.sh runs it.
TEST(RetainFreedMemory, AFreedLargeBlockIsReusedWithoutPageFaults) {
  if (!retain_freed_memory()) GTEST_SKIP() << "this allocator ignores mallopt (a sanitizer's, or not glibc)";
  constexpr size_t kBytes = size_t{64} << 20, kPage = 4096;
  auto use_and_free = [] {
    auto* p = static_cast<volatile char*>(std::malloc(kBytes));
    ASSERT_NE(p, nullptr);
    for (size_t i = 0; i < kBytes; i += kPage) p[i] = 1;
    std::free(const_cast<char*>(p));
  };
  auto faults = [] {
    rusage ru{};
    ::getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_minflt;
  };
  use_and_free();  // the first use faults every page in
  const long before = faults();
  use_and_free();
  use_and_free();
  // Two requests' worth of 16,384 pages each; a handful of faults is noise.
  EXPECT_LT(faults() - before, 64);
}

// 0 -> 1, 1 -> 2, 2 -> 0, 0 -> 2 with damping 0.85, solved by hand:
//   r0 = 0.05 + 0.85 r2,  r1 = 0.05 + 0.425 r0,  r2 = 0.05 + 0.85 r1 + 0.425 r0
//   => r0 = 0.128625 / 0.3316875 = 0.387790, r1 = 0.214811, r2 = 0.397400.
TEST(Pagerank, MatchesAHandComputedAnswer) {
  const std::vector<uint32_t> edges{0, 1, 1, 2, 2, 0, 0, 2};
  auto r = pagerank(3, edges, 200);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NEAR((*r)[0], 0.387790, 1e-5);
  EXPECT_NEAR((*r)[1], 0.214811, 1e-5);
  EXPECT_NEAR((*r)[2], 0.397400, 1e-5);
}

TEST(Pagerank, DanglingNodesKeepTheRanksAProbability) {
  // Node 2 has no out-edges; its rank is spread over every node.
  const std::vector<uint32_t> edges{0, 2, 1, 2};
  auto r = pagerank(3, edges, 100);
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(std::accumulate(r->begin(), r->end(), 0.0), 1.0, 1e-5);
  EXPECT_NEAR((*r)[0], (*r)[1], 1e-7);  // symmetric
  EXPECT_GT((*r)[2], (*r)[0]);
}

TEST(Pagerank, RejectsEdgesOutsideTheGraph) {
  const std::vector<uint32_t> edges{0, 1, 1, 7};
  auto r = pagerank(3, edges, 10);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("outside"), std::string::npos);
}

TEST(Pagerank, ModelAndFrontendAgreeAndMalformedRequestsAreRejected) {
  OneRequest r;
  ASSERT_NO_FATAL_FAILURE(run_one("pagerank", {.factor = 0.001, .seed = 7}, 0, &r));
  EXPECT_TRUE(r.fe->consume(r.resp).ok());
  EXPECT_NE(r.fe->summary().find("top nodes"), std::string::npos);

  auto rejected = [&](std::vector<std::byte> bad) {
    auto got = process(*r.model, bad);
    return !got.ok() && got.status().code() == StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(rejected({}));                                                            // empty
  EXPECT_TRUE(rejected(std::vector<std::byte>(r.req.begin(), r.req.begin() + 20)));         // half a header
  EXPECT_TRUE(rejected(std::vector<std::byte>(r.req.begin(), r.req.end() - 8)));            // an edge short
  auto wrong_magic = r.req;
  wrong_magic[0] = std::byte{0};
  EXPECT_TRUE(rejected(wrong_magic));
  WireHeader h;
  std::memcpy(&h, r.req.data(), sizeof(h));
  for (auto mutate : {+[](WireHeader& x) { x.dims[0] = 0; }, +[](WireHeader& x) { x.dims[2] = 0; },
                      +[](WireHeader& x) { x.dims[1] = ~uint64_t{0} / 4; }, +[](WireHeader& x) { x.version = 9; }}) {
    auto bad = r.req;
    WireHeader m = h;
    mutate(m);
    std::memcpy(bad.data(), &m, sizeof(m));
    EXPECT_TRUE(rejected(bad));
  }
  auto out_of_range = r.req;  // first edge's destination beyond the node count
  const uint32_t huge = 0xfffffff0u;
  std::memcpy(out_of_range.data() + sizeof(WireHeader) + 4, &huge, 4);
  EXPECT_TRUE(rejected(out_of_range));

  // A corrupted response is caught by the frontend.
  auto bad_resp = r.resp;
  const float nan = NAN;
  std::memcpy(bad_resp.data() + sizeof(WireHeader), &nan, sizeof(nan));
  EXPECT_EQ(r.fe->consume(bad_resp).code(), StatusCode::kDataLoss);
  EXPECT_EQ(r.fe->consume(std::span<const std::byte>(r.resp).first(r.resp.size() - 4)).code(), StatusCode::kDataLoss);
}

// The whole path: a Server serving the workload, a Client calling it over
// the copy path and the zero-copy path.
TEST(Pagerank, ServedThroughRocket) {
  const Workload& w = workload("pagerank");
  const Scale s{.factor = 0.002, .seed = 3};
  auto model = w.start_backend(s);
  ASSERT_TRUE(model.ok());
  const Model* m = model->get();
  ServerOptions so;
  so.socket_path = "/tmp/rocket-wl-test-" + std::to_string(::getpid()) + ".sock";
  so.default_client_pool_bytes = so.default_server_pool_bytes = 4 << 20;
  Server server(so);
  ASSERT_TRUE(server.handle("pagerank", [m](const Request& rq, Response& rs) -> Status {
    return m->process(rq.data(), [&rs](size_t n) { return rs.alloc(n); }).status();
  }).ok());
  ASSERT_TRUE(server.start().ok());
  auto c = Client::connect(so.socket_path);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto fe = w.frontend(s);
  auto req = request_of(*fe, 1);
  auto expected = process(*m, req);
  ASSERT_TRUE(expected.ok());
  auto reply = c->call("pagerank", std::span<const std::byte>(req));
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_TRUE(std::equal(reply->data().begin(), reply->data().end(), expected->begin(), expected->end()));
  EXPECT_TRUE(fe->consume(reply->data()).ok());
  // Zero-copy: built in the pool.
  auto buf = c->alloc(fe->request_bytes());
  ASSERT_TRUE(buf.ok());
  fe->make_request(1, buf->span());
  auto reply2 = c->call("pagerank", *buf);
  ASSERT_TRUE(reply2.ok());
  EXPECT_TRUE(std::equal(reply2->data().begin(), reply2->data().end(), expected->begin(), expected->end()));
  // A malformed request fails that call only.
  std::vector<std::byte> junk(100, std::byte{0x5a});
  auto bad = c->call("pagerank", std::span<const std::byte>(junk));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(c->call("pagerank", std::span<const std::byte>(req)).ok());
  c->close();
  server.stop();
  server.wait();
}

#ifdef ROCKET_HAVE_XGBOOST
TEST(Xgboost, ServedPredictionsEqualInProcessPredict) {
  const Scale s{.factor = 0.02, .seed = 11};
  OneRequest r;
  ASSERT_NO_FATAL_FAILURE(run_one("xgboost", s, 2, &r));
  ASSERT_TRUE(r.fe->consume(r.resp).ok());
  // Independent: the same model trained in-process, predicting through a
  // DMatrix copy of the rows (the backend predicts in place).
  auto booster = XgbBooster::train(s);
  ASSERT_TRUE(booster.ok());
  const uint64_t rows = (r.req.size() - sizeof(WireHeader)) / (kXgbFeatures * sizeof(float));
  std::vector<float> direct(rows);
  ASSERT_TRUE(
      (*booster)
          ->predict_via_dmatrix(reinterpret_cast<const float*>(r.req.data() + sizeof(WireHeader)), rows, direct.data())
          .ok());
  std::vector<float> served(rows);
  std::memcpy(served.data(), r.resp.data() + sizeof(WireHeader), rows * sizeof(float));
  EXPECT_EQ(served, direct);
  // The model learned its rule: predictions are not all one class.
  auto positive = std::count_if(served.begin(), served.end(), [](float p) { return p >= 0.5f; });
  EXPECT_GT(positive, static_cast<long>(rows / 10));
  EXPECT_LT(positive, static_cast<long>(rows * 9 / 10));
  // In-place predictions from four threads at once, each on its own rows,
  // equal the DMatrix route's.
  constexpr int kThreads = 4;
  const uint64_t per = rows / kThreads;
  std::vector<std::vector<float>> x(kThreads), together(kThreads, std::vector<float>(per));
  for (int t = 0; t < kThreads; ++t) {
    x[t].resize(per * kXgbFeatures);
    xgb_features(100 + t, per, x[t].data());
  }
  std::vector<Status> st(kThreads);
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      for (int k = 0; k < 20 && st[t].ok(); ++k) st[t] = (*booster)->predict(x[t].data(), per, together[t].data());
    });
  }
  for (auto& th : pool) th.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(st[t].ok()) << st[t].to_string();
    std::vector<float> alone(per);
    ASSERT_TRUE((*booster)->predict_via_dmatrix(x[t].data(), per, alone.data()).ok());
    EXPECT_EQ(together[t], alone) << "thread " << t;
  }
  // A request with the wrong feature count is refused.
  WireHeader h;
  std::memcpy(&h, r.req.data(), sizeof(h));
  h.dims[1] = 29;
  std::memcpy(r.req.data(), &h, sizeof(h));
  EXPECT_EQ(process(*r.model, r.req).status().code(), StatusCode::kInvalidArgument);
}
#endif

#ifdef ROCKET_HAVE_FAISS
TEST(VectorSearch, NeighboursEqualBruteForce) {
  const Scale s{.factor = 0.01, .seed = 5};
  OneRequest r;
  ASSERT_NO_FATAL_FAILURE(run_one("vector_search", s, 0, &r));
  ASSERT_TRUE(r.fe->consume(r.resp).ok());
  WireHeader rh;
  std::memcpy(&rh, r.resp.data(), sizeof(rh));
  const uint64_t nq = rh.dims[0], k = rh.dims[1];
  const std::vector<float> base = vs_base(s);
  const uint64_t n = base.size() / kVsDim;
  const auto* q = reinterpret_cast<const float*>(r.req.data() + sizeof(WireHeader));
  const auto* ids = reinterpret_cast<const int64_t*>(r.resp.data() + sizeof(WireHeader));
  const auto* vecs = reinterpret_cast<const float*>(r.resp.data() + sizeof(WireHeader) + nq * k * sizeof(int64_t));
  for (uint64_t i = 0; i < nq; ++i) {
    std::vector<std::pair<double, int64_t>> d(n);
    for (uint64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (uint64_t x = 0; x < kVsDim; ++x) {
        double diff = static_cast<double>(q[i * kVsDim + x]) - base[j * kVsDim + x];
        sum += diff * diff;
      }
      d[j] = {sum, static_cast<int64_t>(j)};
    }
    std::partial_sort(d.begin(), d.begin() + 10, d.end());
    for (uint64_t r = 0; r < 10; ++r) {
      // Ties (equal distances) may come in either order; compare distances.
      const int64_t got = ids[i * k + r];
      double dist = 0;
      for (uint64_t x = 0; x < kVsDim; ++x) {
        double diff = static_cast<double>(q[i * kVsDim + x]) - base[static_cast<uint64_t>(got) * kVsDim + x];
        dist += diff * diff;
      }
      EXPECT_NEAR(dist, d[r].first, 1e-4) << "query " << i << " rank " << r;
      // The returned vector is the neighbour's own.
      EXPECT_EQ(0, std::memcmp(vecs + (i * k + r) * kVsDim, &base[static_cast<uint64_t>(got) * kVsDim], kVsDim * sizeof(float)));
    }
  }
  // NaN in a query is refused.
  const float nan = NAN;
  std::memcpy(r.req.data() + sizeof(WireHeader), &nan, sizeof(nan));
  EXPECT_EQ(process(*r.model, r.req).status().code(), StatusCode::kInvalidArgument);
}
#endif

#ifdef ROCKET_HAVE_TORCH
TEST(Mobilenet, OutputShapeAndDeterminismForAFixedSeed) {
  const uint64_t n = 2;
  std::vector<float> images(n * 3 * 224 * 224);
  mobilenet_images(9, n, images.data());
  for (float v : images) ASSERT_TRUE(std::isfinite(v));
  std::vector<float> a(n * mobilenet_classes()), b(a.size()), c(a.size());
  MobilenetNet net1(42), net2(42), net3(43);
  ASSERT_TRUE(net1.forward(images.data(), n, a.data()).ok());
  ASSERT_TRUE(net2.forward(images.data(), n, b.data()).ok());
  ASSERT_TRUE(net3.forward(images.data(), n, c.data()).ok());
  EXPECT_EQ(a, b);  // same seed, same weights, same logits
  EXPECT_NE(a, c);
  // Different images give different logits (the network is not constant).
  EXPECT_NE(std::vector<float>(a.begin(), a.begin() + 1000), std::vector<float>(a.begin() + 1000, a.end()));

  OneRequest r;
  ASSERT_NO_FATAL_FAILURE(run_one("mobilenetv2", {.factor = 0.005, .seed = 42}, 0, &r));  // one image
  WireHeader h;
  std::memcpy(&h, r.resp.data(), sizeof(h));
  EXPECT_EQ(h.dims[0], 1u);
  EXPECT_EQ(h.dims[1], 1000u);
  EXPECT_EQ(r.resp.size(), sizeof(WireHeader) + 1000 * sizeof(float));
  EXPECT_TRUE(r.fe->consume(r.resp).ok());
  EXPECT_NE(r.fe->summary().find("top-5"), std::string::npos);
  // 3x225x224 is refused.
  WireHeader rh;
  std::memcpy(&rh, r.req.data(), sizeof(rh));
  rh.dims[2] = 225;
  std::memcpy(r.req.data(), &rh, sizeof(rh));
  EXPECT_EQ(process(*r.model, r.req).status().code(), StatusCode::kInvalidArgument);
}
#endif

}  // namespace
}  // namespace rocket::workloads
