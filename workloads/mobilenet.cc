// Image classification: the frontend decodes, resizes and normalises
// synthetic images into a batch of 3x224x224 fp32 tensors; the backend runs a
// libtorch MobileNetV2 (random weights from a fixed seed); the frontend takes
// the top-5 classes of each image from the logits.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mobilenet.h"
#include "workloads_internal.h"

namespace rocket::workloads {
namespace {

constexpr uint32_t kRequestMagic = 0x5242544d;   // "MTBR"
constexpr uint32_t kResponseMagic = 0x5342544d;  // "MTBS"
constexpr uint64_t kSide = 224, kChannels = 3, kClasses = 1000;
constexpr uint64_t kMaxBatch = 4096;
constexpr uint64_t kSourceSide = 256;  // the "decoded" image before resizing

// Convolution, batch norm and (optionally) ReLU6.
struct ConvBNImpl : torch::nn::Module {
  ConvBNImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups, bool relu)
      : conv(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).groups(groups).bias(false)),
        bn(out),
        relu(relu) {
    register_module("conv", conv);
    register_module("bn", bn);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = bn->forward(conv->forward(x));
    return relu ? torch::clamp(y, 0, 6) : y;
  }
  torch::nn::Conv2d conv;
  torch::nn::BatchNorm2d bn;
  bool relu;
};
TORCH_MODULE(ConvBN);

struct InvertedResidualImpl : torch::nn::Module {
  InvertedResidualImpl(int64_t in, int64_t out, int64_t stride, int64_t expand) : residual(stride == 1 && in == out) {
    const int64_t hidden = in * expand;
    if (expand != 1) body->push_back(ConvBN(in, hidden, 1, 1, 1, true));
    body->push_back(ConvBN(hidden, hidden, 3, stride, hidden, true));  // depthwise
    body->push_back(ConvBN(hidden, out, 1, 1, 1, false));             // linear bottleneck
    register_module("body", body);
  }
  torch::Tensor forward(const torch::Tensor& x) { return residual ? x + body->forward(x) : body->forward(x); }
  bool residual;
  torch::nn::Sequential body;
};
TORCH_MODULE(InvertedResidual);

// MobileNetV2 (Sandler et al. 2018), width 1.0, as in torchvision.
struct MobileNetV2Impl : torch::nn::Module {
  MobileNetV2Impl() {
    features->push_back(ConvBN(3, 32, 3, 2, 1, true));
    int64_t in = 32;
    const int64_t settings[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                                    {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    for (const auto& s : settings) {
      for (int64_t i = 0; i < s[2]; ++i) {
        features->push_back(InvertedResidual(in, s[1], i == 0 ? s[3] : 1, s[0]));
        in = s[1];
      }
    }
    features->push_back(ConvBN(in, 1280, 1, 1, 1, true));
    register_module("features", features);
    register_module("classifier", classifier);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = features->forward(x);
    y = torch::adaptive_avg_pool2d(y, {1, 1}).flatten(1);
    return classifier->forward(y);
  }
  torch::nn::Sequential features;
  torch::nn::Linear classifier{1280, static_cast<int64_t>(kClasses)};
};
TORCH_MODULE(MobileNetV2);

}  // namespace

struct MobilenetNet::Impl {
  MobileNetV2 net{nullptr};
};

MobilenetNet::MobilenetNet(uint64_t seed) : impl_(std::make_unique<Impl>()) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  impl_->net = MobileNetV2();
  // Kaiming-style weights so activations neither vanish nor explode;
  // BatchNorm in eval mode with its default running statistics.
  for (auto& p : impl_->net->named_parameters()) {
    if (p.key().find("weight") != std::string::npos && p.value().dim() > 1) {
      torch::nn::init::kaiming_normal_(p.value(), 0.0, torch::kFanOut);
    }
  }
  impl_->net->eval();
}
MobilenetNet::~MobilenetNet() = default;

Status MobilenetNet::forward(const float* images, uint64_t n, float* logits) const {
  try {
    torch::NoGradGuard no_grad;
    auto in = torch::from_blob(const_cast<float*>(images),
                               {static_cast<int64_t>(n), static_cast<int64_t>(kChannels), static_cast<int64_t>(kSide),
                                static_cast<int64_t>(kSide)},
                               torch::kFloat32);
    auto out = impl_->net->forward(in).contiguous();
    if (out.size(0) != static_cast<int64_t>(n) || out.size(1) != static_cast<int64_t>(kClasses)) {
      return internal_error("mobilenetv2: unexpected output shape");
    }
    std::memcpy(logits, out.data_ptr<float>(), n * kClasses * sizeof(float));
    return ok_status();
  } catch (const std::exception& e) {
    return internal_error(std::string("libtorch: ") + e.what());
  }
}

uint64_t mobilenet_batch(const Scale& s) { return scaled(200, s, 1); }
uint64_t mobilenet_classes() { return kClasses; }

void mobilenet_images(uint64_t seed, uint64_t n, float* out) {
  // "Decode": a synthetic 256x256 RGB image per entry (gradients, stripes and
  // noise), then resize to 224x224 bilinearly and normalise with the
  // ImageNet mean and standard deviation, laid out CHW.
  static constexpr float kMean[3] = {0.485f, 0.456f, 0.406f}, kStd[3] = {0.229f, 0.224f, 0.225f};
  std::vector<uint8_t> src(kSourceSide * kSourceSide * kChannels);
  for (uint64_t img = 0; img < n; ++img) {
    SplitMix rng(seed * 1315423911ULL + img);
    const double fx = 0.01 + 0.05 * rng.uniform(), fy = 0.01 + 0.05 * rng.uniform();
    for (uint64_t y = 0; y < kSourceSide; ++y) {
      for (uint64_t x = 0; x < kSourceSide; ++x) {
        for (uint64_t c = 0; c < kChannels; ++c) {
          double v = 127.5 + 80.0 * std::sin(fx * static_cast<double>(x) * static_cast<double>(c + 1)) +
                     40.0 * std::cos(fy * static_cast<double>(y)) + 8.0 * (rng.uniform() - 0.5);
          src[(y * kSourceSide + x) * kChannels + c] = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
        }
      }
    }
    float* dst = out + img * kChannels * kSide * kSide;
    const double scale = static_cast<double>(kSourceSide) / static_cast<double>(kSide);
    for (uint64_t y = 0; y < kSide; ++y) {
      const double sy = (static_cast<double>(y) + 0.5) * scale - 0.5;
      const auto y0 = static_cast<uint64_t>(std::max(0.0, std::floor(sy)));
      const uint64_t y1 = std::min(y0 + 1, kSourceSide - 1);
      const double wy = std::clamp(sy - static_cast<double>(y0), 0.0, 1.0);
      for (uint64_t x = 0; x < kSide; ++x) {
        const double sx = (static_cast<double>(x) + 0.5) * scale - 0.5;
        const auto x0 = static_cast<uint64_t>(std::max(0.0, std::floor(sx)));
        const uint64_t x1 = std::min(x0 + 1, kSourceSide - 1);
        const double wx = std::clamp(sx - static_cast<double>(x0), 0.0, 1.0);
        for (uint64_t c = 0; c < kChannels; ++c) {
          auto at = [&](uint64_t yy, uint64_t xx) { return static_cast<double>(src[(yy * kSourceSide + xx) * kChannels + c]); };
          double v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
          dst[(c * kSide + y) * kSide + x] = static_cast<float>((v / 255.0 - kMean[c]) / kStd[c]);
        }
      }
    }
  }
}

namespace {

class MobilenetModel final : public Model {
 public:
  explicit MobilenetModel(uint64_t seed) : net_(seed) {}
  Result<size_t> process(std::span<const std::byte> request, const ResponseAlloc& alloc) const override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(request, kRequestMagic, "mobilenetv2 request"));
    const uint64_t n = h.dims[0];
    if (h.dims[1] != kChannels || h.dims[2] != kSide || h.dims[3] != kSide) {
      return invalid_argument("mobilenetv2 request: images must be 3x224x224, got " + std::to_string(h.dims[1]) + "x" +
                              std::to_string(h.dims[2]) + "x" + std::to_string(h.dims[3]));
    }
    if (n == 0 || n > kMaxBatch) return invalid_argument("mobilenetv2 request: batch of " + std::to_string(n) + " (1 to 4096)");
    if (request.size() - sizeof(WireHeader) != n * kChannels * kSide * kSide * sizeof(float)) {
      return invalid_argument("mobilenetv2 request: length does not match its batch");
    }
    ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(sizeof(WireHeader) + n * kClasses * sizeof(float)));
    write_header(out, WireHeader{.magic = kResponseMagic, .version = 1, .dims = {n, kClasses, 0, 0}});
    ROCKET_RETURN_IF_ERROR(net_.forward(reinterpret_cast<const float*>(request.data() + sizeof(WireHeader)), n,
                                        reinterpret_cast<float*>(out.data() + sizeof(WireHeader))));
    return out.size();
  }

 private:
  MobilenetNet net_;
};

class MobilenetFrontend final : public Frontend {
 public:
  explicit MobilenetFrontend(const Scale& s) : seed_(s.seed), n_(mobilenet_batch(s)) {}
  size_t request_bytes() const noexcept override { return sizeof(WireHeader) + n_ * kChannels * kSide * kSide * sizeof(float); }
  size_t max_response_bytes() const noexcept override { return sizeof(WireHeader) + n_ * kClasses * sizeof(float); }
  void make_request(uint64_t i, std::span<std::byte> out) override {
    write_header(out, WireHeader{.magic = kRequestMagic, .version = 1, .dims = {n_, kChannels, kSide, kSide}});
    mobilenet_images(seed_ * 31 + i, n_, reinterpret_cast<float*>(out.data() + sizeof(WireHeader)));
  }
  Status consume(std::span<const std::byte> response) override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(response, kResponseMagic, "mobilenetv2 response"));
    if (h.dims[0] != n_ || h.dims[1] != kClasses || response.size() != max_response_bytes()) {
      return data_loss("mobilenetv2 response: wrong shape");
    }
    const auto* logits = reinterpret_cast<const float*>(response.data() + sizeof(WireHeader));
    std::array<uint32_t, 5> top0{};
    for (uint64_t img = 0; img < n_; ++img) {
      const float* l = logits + img * kClasses;
      std::array<uint32_t, 5> top{};
      std::array<float, 5> best{};
      best.fill(-INFINITY);
      for (uint32_t c = 0; c < kClasses; ++c) {
        if (!std::isfinite(l[c])) return data_loss("mobilenetv2 response: a logit is NaN or infinite");
        for (size_t r = 0; r < 5; ++r) {
          if (l[c] > best[r]) {
            for (size_t m = 4; m > r; --m) {
              best[m] = best[m - 1];
              top[m] = top[m - 1];
            }
            best[r] = l[c];
            top[r] = c;
            break;
          }
        }
      }
      if (img == 0) top0 = top;
    }
    summary_ = "top-5 classes of image 0:";
    for (uint32_t c : top0) summary_ += " " + std::to_string(c);
    return ok_status();
  }
  std::string summary() const override { return summary_; }

 private:
  uint64_t seed_, n_;
  std::string summary_;
};

class MobilenetWorkload final : public Workload {
 public:
  std::string_view name() const noexcept override { return "mobilenetv2"; }
  std::string_view description() const noexcept override { return kMobilenetDescription; }
  Result<std::unique_ptr<Model>> start_backend(const Scale& s) const override {
    return std::unique_ptr<Model>(std::make_unique<MobilenetModel>(s.seed));
  }
  std::unique_ptr<Frontend> frontend(const Scale& s) const override { return std::make_unique<MobilenetFrontend>(s); }
};

}  // namespace

const Workload& mobilenet_workload() {
  static const MobilenetWorkload w;
  return w;
}

}  // namespace rocket::workloads
