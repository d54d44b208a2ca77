// cvlth's direct sparse convolution for unstructured tickets on CPU (float32, NCHW, groups = 1).
//
// Only the kept weights are stored: per output channel, its non-zero weights and, for each, the
// offset of the input element it multiplies inside one zero-padded image (channel, row, column
// folded into one number). No im2col matrix is built: every non-zero weight adds a shifted copy of
// one padded input plane to its output plane.
//
// Stride 1: the output is computed on the padded width (the columns beyond the true output width
// are discarded at the end), so each weight's contribution is one contiguous multiply-add over
// the flattened plane, which the compiler vectorises; four weights are applied per pass, so the
// accumulator is loaded and stored once per four multiply-adds. Other strides read strided rows.
// The batch x output-channel planes are split over OpenMP threads (torch's thread count).
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <vector>

torch::Tensor sparse_conv_forward(
    torch::Tensor padded,   // [N, C, Hp, Wp] float32, contiguous, zero-padded input
    torch::Tensor rowptr,   // [Cout + 1] int64: output channel co's weights are rowptr[co]..rowptr[co+1]
    torch::Tensor offsets,  // [nnz] int64: c * Hp * Wp + ky * dil_h * Wp + kx * dil_w
    torch::Tensor values,   // [nnz] float32
    torch::Tensor bias,     // [Cout] float32, or empty: none
    bool relu,              // max(0, .) on the way out (a folded conv-BN-ReLU)
    int64_t out_h, int64_t out_w, int64_t stride_h, int64_t stride_w) {
  TORCH_CHECK(padded.dtype() == torch::kFloat32 && padded.is_contiguous() && padded.dim() == 4,
              "sparse_conv_forward: a contiguous float32 NCHW input is expected");
  const int64_t n_images = padded.size(0), channels = padded.size(1);
  const int64_t hp = padded.size(2), wp = padded.size(3);
  const int64_t out_channels = rowptr.size(0) - 1;
  auto out = torch::empty({n_images, out_channels, out_h, out_w}, padded.options());
  const float* x = padded.data_ptr<float>();
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const float* val = values.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t image = channels * hp * wp;
  const int64_t planes = n_images * out_channels;
  const bool unit = stride_h == 1 && stride_w == 1;
  // stride 1: accumulate over the padded width; the last row needs only out_w columns
  const int64_t span = unit ? (out_h - 1) * wp + out_w : out_h * out_w;

#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> acc(static_cast<size_t>(span));
    float* a = acc.data();
#pragma omp for schedule(dynamic, 4)
    for (int64_t plane = 0; plane < planes; ++plane) {
      const int64_t n = plane / out_channels, co = plane % out_channels;
      const float* base = x + n * image;
      std::fill(acc.begin(), acc.end(), 0.0f);
      int64_t k = ptr[co];
      const int64_t end = ptr[co + 1];
      if (unit) {
        for (; k + 4 <= end; k += 4) {
          const float* p0 = base + off[k];
          const float* p1 = base + off[k + 1];
          const float* p2 = base + off[k + 2];
          const float* p3 = base + off[k + 3];
          const float v0 = val[k], v1 = val[k + 1], v2 = val[k + 2], v3 = val[k + 3];
#pragma omp simd
          for (int64_t t = 0; t < span; ++t) {
            a[t] += v0 * p0[t] + v1 * p1[t] + v2 * p2[t] + v3 * p3[t];
          }
        }
        for (; k < end; ++k) {
          const float* p = base + off[k];
          const float v = val[k];
#pragma omp simd
          for (int64_t t = 0; t < span; ++t) a[t] += v * p[t];
        }
        float* dst = y + plane * out_h * out_w;
        const float shift = b ? b[co] : 0.0f;
        for (int64_t oy = 0; oy < out_h; ++oy) {
          const float* src = a + oy * wp;
          float* row = dst + oy * out_w;
          if (relu) {
            for (int64_t ox = 0; ox < out_w; ++ox) row[ox] = std::max(src[ox] + shift, 0.0f);
          } else {
            for (int64_t ox = 0; ox < out_w; ++ox) row[ox] = src[ox] + shift;
          }
        }
      } else {
        for (; k < end; ++k) {
          const float* p = base + off[k];
          const float v = val[k];
          for (int64_t oy = 0; oy < out_h; ++oy) {
            const float* row = p + oy * stride_h * wp;
            float* arow = a + oy * out_w;
            for (int64_t ox = 0; ox < out_w; ++ox) arow[ox] += v * row[ox * stride_w];
          }
        }
        float* dst = y + plane * out_h * out_w;
        const float shift = b ? b[co] : 0.0f;
        for (int64_t t = 0; t < span; ++t) dst[t] = relu ? std::max(a[t] + shift, 0.0f) : a[t] + shift;
      }
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv_forward", &sparse_conv_forward, "direct sparse convolution (float32, NCHW)");
}
