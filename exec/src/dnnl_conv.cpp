#include "dnnl_conv.hpp"

#include <dnnl.hpp>

#include <map>
#include <tuple>

namespace fuseplan::exec {

namespace {
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using Key = std::tuple<int, int, int, int, int, int, int, int, bool>;

Key key_of(const ConvShape& s, bool bias) { return {s.n, s.c, s.h, s.w, s.k, s.r, s.stride, s.pad, bias}; }

struct Prims {
  dnnl::memory::desc src, wei, bias, dst;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
};
}  // namespace

struct DnnlConv::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::map<Key, Prims> cache;

  Prims& get(const ConvShape& s, bool bias) {
    auto it = cache.find(key_of(s, bias));
    if (it != cache.end()) return it->second;
    Prims p;
    p.src = dnnl::memory::desc({s.n, s.c, s.h, s.w}, dt::f32, tag::nchw);
    p.wei = dnnl::memory::desc({s.k, s.c, s.r, s.r}, dt::f32, tag::oihw);
    p.bias = dnnl::memory::desc({s.k}, dt::f32, tag::x);
    p.dst = dnnl::memory::desc({s.n, s.k, s.p, s.q}, dt::f32, tag::nchw);
    const dnnl::memory::dims strides{s.stride, s.stride}, pad_l{s.pad, s.pad},
        pad_r{(s.p - 1) * s.stride + s.r - s.h - s.pad, (s.q - 1) * s.stride + s.r - s.w - s.pad};
    auto fwd_d = bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                        dnnl::algorithm::convolution_direct, p.src, p.wei, p.bias,
                                                        p.dst, strides, pad_l, pad_r)
                      : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                        dnnl::algorithm::convolution_direct, p.src, p.wei, p.dst,
                                                        strides, pad_l, pad_r);
    dnnl::convolution_forward::primitive_desc fwd_pd(fwd_d, eng);
    p.fwd = dnnl::convolution_forward(fwd_pd);
    dnnl::convolution_backward_data::desc bd_d(dnnl::algorithm::convolution_direct, p.src, p.wei, p.dst, strides,
                                               pad_l, pad_r);
    p.bwd_data = dnnl::convolution_backward_data(dnnl::convolution_backward_data::primitive_desc(bd_d, eng, fwd_pd));
    auto bw_d = bias ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, p.wei,
                                                                p.bias, p.dst, strides, pad_l, pad_r)
                     : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, p.wei,
                                                                p.dst, strides, pad_l, pad_r);
    p.bwd_weights =
        dnnl::convolution_backward_weights(dnnl::convolution_backward_weights::primitive_desc(bw_d, eng, fwd_pd));
    return cache.emplace(key_of(s, bias), std::move(p)).first->second;
  }

  dnnl::memory mem(const dnnl::memory::desc& d, const float* ptr) {
    return dnnl::memory(d, eng, const_cast<float*>(ptr));  // oneDNN takes non-const handles
  }
};

DnnlConv::DnnlConv() : impl_(std::make_unique<Impl>()) {}
DnnlConv::~DnnlConv() = default;

void DnnlConv::forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) {
  Prims& p = impl_->get(s, b != nullptr);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, impl_->mem(p.src, x)}, {DNNL_ARG_WEIGHTS, impl_->mem(p.wei, w)}, {DNNL_ARG_DST, impl_->mem(p.dst, y)}};
  if (b) args.emplace(DNNL_ARG_BIAS, impl_->mem(p.bias, b));
  p.fwd.execute(impl_->strm, args);
  impl_->strm.wait();
}

void DnnlConv::backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                        float* db) {
  Prims& p = impl_->get(s, db != nullptr);
  if (dx)
    p.bwd_data.execute(impl_->strm, {{DNNL_ARG_DIFF_DST, impl_->mem(p.dst, dy)},
                                     {DNNL_ARG_WEIGHTS, impl_->mem(p.wei, w)},
                                     {DNNL_ARG_DIFF_SRC, impl_->mem(p.src, dx)}});
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, impl_->mem(p.src, x)},
                                             {DNNL_ARG_DIFF_DST, impl_->mem(p.dst, dy)},
                                             {DNNL_ARG_DIFF_WEIGHTS, impl_->mem(p.wei, dw)}};
  if (db) args.emplace(DNNL_ARG_DIFF_BIAS, impl_->mem(p.bias, db));
  p.bwd_weights.execute(impl_->strm, args);
  impl_->strm.wait();
}

}  // namespace fuseplan::exec
