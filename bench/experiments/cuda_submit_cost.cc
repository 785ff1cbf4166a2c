// Diagnostic (bench/experiments): where the caller's CPU goes in one GPU copy. Opens
// librocket_cuda.so directly and times, per size and path, the two pointer-kind
// queries, the copy's submission, one completion query, the driver's blocking wait,
// and a sleep with the default and a 1 us timer slack. Results of session 5 in
// bench/results/gpu-h100-2026-11-22/s5-submit-cost.txt. Built with the tools
// (build/release/rocket_cuda_submit_cost); on the GPU machine:
//   build/release/rocket_cuda_submit_cost build/release/librocket_cuda.so
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "cuda_api.h"
static double tcpu() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}
static double wall() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}
static double med(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
volatile unsigned long sink;  // keeps the reads
static void consume(const void* p, size_t n) {
  const unsigned long* q = (const unsigned long*)p;
  unsigned long s = 0;
  for (size_t i = 0; i < n / 8; i += 8) s += q[i];
  sink = sink + s;
}
int main(int argc, char** argv) {
  if (argc != 2) {
    printf("usage: %s path/to/librocket_cuda.so\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) {
    printf("dlopen %s\n", dlerror());
    return 1;
  }
  auto api = ((const RocketCudaApi* (*)())dlsym(lib, "rocket_cuda_api"))();
  if (api->init(0) != 0) {
    printf("init %s\n", api->last_error());
    return 1;
  }
  const size_t N = size_t{128} << 20;
  char* src = (char*)mmap(nullptr, N, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  char* dst = (char*)mmap(nullptr, N, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  memset(src, 1, N);
  api->host_register(src, N, 0);
  api->host_register(dst, N, 0);
  void* dev;
  api->device_alloc(&dev, N);
  for (int hot = 0; hot < 2; ++hot)
    for (size_t n : {size_t{1} << 20, size_t{16} << 20, size_t{128} << 20}) {
      for (int path = 0; path < 3; ++path) {  // 0 kernel, 1 staged, 2 h2d
        std::vector<double> kind_c, copy_c, copy_w, q_c, wait_c, wait_late, total_w;
        for (int i = 0; i < 40; ++i) {
          if (hot) {
            consume(src, n);
            consume(dst, n);
          }
          double c0 = tcpu(), w0 = wall();
          int dk = api->pointer_kind(path == 2 ? dev : dst), sk = api->pointer_kind(src);
          double c1 = tcpu();
          void* op;
          if (api->copy(path == 2 ? dev : dst, src, n, dk, sk,
                        path == 1 ? ROCKET_CUDA_H2H_STAGED : ROCKET_CUDA_H2H_KERNEL, &op) != 0) {
            printf("copy %s\n", api->last_error());
            return 1;
          }
          double c2 = tcpu(), w2 = wall();
          api->op_query(op);
          double c3 = tcpu();
          // poll to done to know the end
          while (api->op_query(op) == 0) {
          }
          double wend = wall();
          api->op_release(op);
          kind_c.push_back(c1 - c0);
          copy_c.push_back(c2 - c1);
          copy_w.push_back(w2 - w0);
          q_c.push_back(c3 - c2);
          total_w.push_back(wend - w0);
          // blocking wait cost: new copy, wait blocking right away
          if (api->copy(path == 2 ? dev : dst, src, n, dk, sk,
                        path == 1 ? ROCKET_CUDA_H2H_STAGED : ROCKET_CUDA_H2H_KERNEL, &op) != 0)
            return 1;
          double w4 = wall();
          double c4 = tcpu();
          api->op_wait(op);
          double c5 = tcpu(), w5 = wall();
          api->op_release(op);
          wait_c.push_back(c5 - c4);
          wait_late.push_back((w5 - w4));
        }
        printf(
            "hot=%d n=%zuM path=%d kinds_cpu=%.1f copy_cpu=%.1f copy_wall=%.1f query_cpu=%.2f polled_total=%.1f | "
            "blockwait_cpu=%.1f blockwait_wall=%.1f\n",
            hot, n >> 20, path, med(kind_c), med(copy_c), med(copy_w), med(q_c), med(total_w), med(wait_c),
            med(wait_late));
      }
    }
  // sleep cost
  for (int slack : {0, 1})
    for (int us : {100, 300, 1000}) {
      std::vector<double> c, late;
      for (int i = 0; i < 50; ++i) {
        double c0 = tcpu(), w0 = wall();
        long old = 0;
        if (slack) {
          old = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
          prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(us));
        if (slack) prctl(PR_SET_TIMERSLACK, old, 0, 0, 0);
        c.push_back(tcpu() - c0);
        late.push_back(wall() - w0 - us);
      }
      printf("sleep %d us slack1us=%d: cpu=%.1f late=%.1f\n", us, slack, med(c), med(late));
    }
  return 0;
}
