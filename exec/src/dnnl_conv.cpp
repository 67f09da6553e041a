#include "dnnl_conv.hpp"

#include <dnnl.hpp>

#include <map>
#include <tuple>

#include "host_scratch.hpp"

namespace fuseplan::exec {

namespace {
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using Key = std::tuple<int, int, int, int, int, int, int, int, bool>;

Key key_of(const ConvShape& s, bool bias) { return {s.n, s.c, s.h, s.w, s.k, s.r, s.stride, s.pad, bias}; }

// Primitives for one shape, and the layouts of the caller's buffers (`*_user`): blocked
// activations where their channels fill whole blocks, else NCHW; OIHW weights. Operands
// the caller holds in NCHW / OIHW are left to oneDNN (format `any`: its blocked layouts,
// for which it has direct JIT kernels; on plain layouts it falls back to im2col + GEMM)
// and reordered on each call.
struct Prims {
  dnnl::memory::desc src_user, wei_user, bias, dst_user;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
};

}  // namespace

struct DnnlConv::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::map<Key, Prims> cache;
  // One buffer per operand slot: two inputs, the weights (or their gradient), one output.
  // Layers run one at a time, so every shape shares them.
  Scratch in_a, in_b, wei, out;
  int block = 0;  // channels per block of the blocked activation layout (0: NCHW only)

  Prims& get(const ConvShape& s, bool bias) {
    auto it = cache.find(key_of(s, bias));
    if (it != cache.end()) return it->second;
    Prims p;
    // The activations as the backend stores them: channel-blocked where blocked(c) (the
    // primitive takes them as they are), else NCHW (the primitive picks its layout and
    // the operand is reordered); weights are OIHW in the parameter buffer.
    const tag blk = block == 16 ? tag::nChw16c : tag::nChw8c;
    const bool src_blocked = block && s.c % block == 0, dst_blocked = block && s.k % block == 0;
    p.src_user = dnnl::memory::desc({s.n, s.c, s.h, s.w}, dt::f32, src_blocked ? blk : tag::nchw);
    p.wei_user = dnnl::memory::desc({s.k, s.c, s.r, s.r}, dt::f32, tag::oihw);
    p.bias = dnnl::memory::desc({s.k}, dt::f32, tag::x);
    p.dst_user = dnnl::memory::desc({s.n, s.k, s.p, s.q}, dt::f32, dst_blocked ? blk : tag::nchw);
    const dnnl::memory::desc src({s.n, s.c, s.h, s.w}, dt::f32, src_blocked ? blk : tag::any),
        wei({s.k, s.c, s.r, s.r}, dt::f32, tag::any), dst({s.n, s.k, s.p, s.q}, dt::f32, dst_blocked ? blk : tag::any);
    const dnnl::memory::dims strides{s.stride, s.stride}, pad_l{s.pad, s.pad},
        pad_r{(s.p - 1) * s.stride + s.r - s.h - s.pad, (s.q - 1) * s.stride + s.r - s.w - s.pad};
    const auto fwd_d = bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                              dnnl::algorithm::convolution_direct, src, wei, p.bias,
                                                              dst, strides, pad_l, pad_r)
                            : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                              dnnl::algorithm::convolution_direct, src, wei, dst,
                                                              strides, pad_l, pad_r);
    p.fwd_pd = dnnl::convolution_forward::primitive_desc(fwd_d, eng);
    const dnnl::convolution_backward_data::desc bd_d(dnnl::algorithm::convolution_direct, src, wei, dst, strides,
                                                     pad_l, pad_r);
    p.bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(bd_d, eng, p.fwd_pd);
    const auto bw_d = bias ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src, wei,
                                                                      p.bias, dst, strides, pad_l, pad_r)
                           : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src, wei,
                                                                      dst, strides, pad_l, pad_r);
    p.bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(bw_d, eng, p.fwd_pd);
    p.fwd = dnnl::convolution_forward(p.fwd_pd);
    p.bwd_data = dnnl::convolution_backward_data(p.bwd_data_pd);
    p.bwd_weights = dnnl::convolution_backward_weights(p.bwd_weights_pd);
    return cache.emplace(key_of(s, bias), std::move(p)).first->second;
  }

  dnnl::memory plain(const dnnl::memory::desc& d, const float* ptr) {
    return dnnl::memory(d, eng, const_cast<float*>(ptr));  // oneDNN takes non-const handles
  }
  // An input in the primitive's layout `want`: the user's buffer itself when the layouts
  // agree, else a reordered copy in `buf`.
  dnnl::memory input(const dnnl::memory::desc& want, const dnnl::memory::desc& have, const float* ptr, Scratch& buf) {
    dnnl::memory user = plain(have, ptr);
    if (want == have) return user;
    dnnl::memory m(want, eng, buf.get((want.get_size() + sizeof(float) - 1) / sizeof(float)));
    dnnl::reorder(user, m).execute(strm, user, m);
    return m;
  }
  // An output in the primitive's layout `want`, written back to the user's buffer by
  // `finish` (added to it when `add`).
  dnnl::memory output(const dnnl::memory::desc& want, const dnnl::memory::desc& have, float* ptr, Scratch& buf,
                      bool add) {
    if (want == have && !add) return plain(have, ptr);
    return dnnl::memory(want, eng, buf.get((want.get_size() + sizeof(float) - 1) / sizeof(float)));
  }
  void finish(dnnl::memory m, const dnnl::memory::desc& have, float* ptr, bool add) {
    if (m.get_data_handle() == ptr) return;
    dnnl::memory user = plain(have, ptr);
    dnnl::primitive_attr attr;
    if (add) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);  // the reorder adds onto what the buffer holds (residual branches)
      attr.set_post_ops(ops);
    }
    dnnl::reorder(dnnl::reorder::primitive_desc(m, user, attr)).execute(strm, m, user);
  }
};

std::string dnnl_kernels() {
  const dnnl_version_t* v = dnnl_version();
  std::string isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: isa = "sse41"; break;
    case dnnl::cpu_isa::avx: isa = "avx"; break;
    case dnnl::cpu_isa::avx2: isa = "avx2"; break;
    case dnnl::cpu_isa::avx2_vnni: isa = "avx2_vnni"; break;
    case dnnl::cpu_isa::avx512_core: isa = "avx512_core"; break;
    case dnnl::cpu_isa::avx512_core_vnni: isa = "avx512_core_vnni"; break;
    case dnnl::cpu_isa::avx512_core_bf16: isa = "avx512_core_bf16"; break;
    case dnnl::cpu_isa::avx512_core_amx: isa = "avx512_core_amx"; break;
    default: isa = "isa " + std::to_string(int(dnnl::get_effective_cpu_isa()));
  }
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) + " " +
         isa;
}

int dnnl_block() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  if (isa == dnnl::cpu_isa::avx512_core || isa == dnnl::cpu_isa::avx512_core_vnni ||
      isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx)
    return 16;
  if (isa == dnnl::cpu_isa::avx2 || isa == dnnl::cpu_isa::avx2_vnni) return 8;
  return 0;
}

DnnlConv::DnnlConv(int block) : impl_(std::make_unique<Impl>()) { impl_->block = block; }
DnnlConv::~DnnlConv() = default;

void DnnlConv::forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) {
  Impl& I = *impl_;
  Prims& p = I.get(s, b != nullptr);
  const dnnl::memory src = I.input(p.fwd_pd.src_desc(), p.src_user, x, I.in_a);
  const dnnl::memory wei = I.input(p.fwd_pd.weights_desc(), p.wei_user, w, I.wei);
  const dnnl::memory dst = I.output(p.fwd_pd.dst_desc(), p.dst_user, y, I.out, false);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (b) args.emplace(DNNL_ARG_BIAS, I.plain(p.bias, b));
  p.fwd.execute(I.strm, args);
  I.finish(dst, p.dst_user, y, false);
  I.strm.wait();
}

void DnnlConv::backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                        float* db, bool accumulate_dx) {
  Impl& I = *impl_;
  Prims& p = I.get(s, db != nullptr);
  dnnl::memory diff_dst;  // dy in bwd_data's layout, reused by bwd_weights when theirs agrees
  if (dx) {
    diff_dst = I.input(p.bwd_data_pd.diff_dst_desc(), p.dst_user, dy, I.in_a);
    const dnnl::memory wei = I.input(p.bwd_data_pd.weights_desc(), p.wei_user, w, I.wei);
    const dnnl::memory diff_src = I.output(p.bwd_data_pd.diff_src_desc(), p.src_user, dx, I.out, accumulate_dx);
    p.bwd_data.execute(I.strm, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, diff_src}});
    I.finish(diff_src, p.src_user, dx, accumulate_dx);
  }
  const dnnl::memory src = I.input(p.bwd_weights_pd.src_desc(), p.src_user, x, I.in_b);
  if (!dx || diff_dst.get_desc() != p.bwd_weights_pd.diff_dst_desc())
    diff_dst = I.input(p.bwd_weights_pd.diff_dst_desc(), p.dst_user, dy, I.in_a);
  const dnnl::memory diff_wei = I.output(p.bwd_weights_pd.diff_weights_desc(), p.wei_user, dw, I.wei, false);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_wei}};
  if (db) args.emplace(DNNL_ARG_DIFF_BIAS, I.plain(p.bias, db));
  p.bwd_weights.execute(I.strm, args);
  I.finish(diff_wei, p.wei_user, dw, false);
  I.strm.wait();
}

}  // namespace fuseplan::exec
