#include "device_check.hpp"
#include "fuseplan/exec/mpi.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>

#include "fuseplan/exec/half.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

namespace {

void check(int rc, const char* what, std::source_location at = std::source_location::current()) {
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    device_failure(std::string("MPI: ") + what + " failed: " + std::string(text, size_t(len)), false, at);
  }
}

// Sums of 16-bit values for MPI_Iallreduce, rounded after every addition like the
// schedules' reductions.
void sum_fp16(void* in, void* inout, int* len, MPI_Datatype*) {
  add_half_bits(Precision::FP16, static_cast<const uint16_t*>(in), static_cast<uint16_t*>(inout), size_t(*len));
}
void sum_bf16(void* in, void* inout, int* len, MPI_Datatype*) {
  add_half_bits(Precision::BF16, static_cast<const uint16_t*>(in), static_cast<uint16_t*>(inout), size_t(*len));
}
MPI_Op g_sum_fp16 = MPI_OP_NULL, g_sum_bf16 = MPI_OP_NULL;

int as_int(int64_t n, const char* what) {
  if (n > std::numeric_limits<int>::max())
    throw InputError(std::string(what) + ": " + std::to_string(n) + " elements in one message (at most 2^31 - 1)");
  return static_cast<int>(n);
}

}  // namespace

// ---------------------------------------------------------------------------- MpiWorld

MpiWorld::MpiWorld(int* argc, char*** argv) {
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  thread_multiple_ = provided >= MPI_THREAD_MULTIPLE;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  RankLayout& l = layout_;
  MPI_Comm_rank(MPI_COMM_WORLD, &l.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &l.ranks);
  MPI_Comm local;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, l.rank, MPI_INFO_NULL, &local), "node split");
  MPI_Comm_rank(local, &l.local_rank);
  MPI_Comm_size(local, &l.local_ranks);
  // A node is named by its lowest world rank; number nodes in order of those.
  int leader = l.rank;
  MPI_Bcast(&leader, 1, MPI_INT, 0, local);
  MPI_Comm_free(&local);
  std::vector<int> leaders(static_cast<size_t>(l.ranks));
  MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::map<int, int> index;
  for (int x : leaders) index.emplace(x, 0);
  int k = 0;
  for (auto& [lead, i] : index) i = k++;
  l.nodes = k;
  l.node_of_rank.resize(leaders.size());
  for (size_t r = 0; r < leaders.size(); ++r) l.node_of_rank[r] = index[leaders[r]];
  l.node = l.node_of_rank[size_t(l.rank)];
  l.per_node = int(std::count(l.node_of_rank.begin(), l.node_of_rank.end(), 0));
  for (int r = 0; r < l.ranks; ++r)
    if (l.node_of_rank[size_t(r)] != r / l.per_node) l.node_major = false;
  MPI_Op_create(&sum_fp16, 1, &g_sum_fp16);
  MPI_Op_create(&sum_bf16, 1, &g_sum_bf16);
}

MpiWorld::~MpiWorld() {
  MPI_Op_free(&g_sum_fp16);
  MPI_Op_free(&g_sum_bf16);
  MPI_Finalize();
}

bool MpiWorld::launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

namespace {
// Polls `requests` until all are complete or `timeout_s` (> 0) passes, spinning first
// (a step's small collectives finish in microseconds), then sleeping up to 5 ms; which
// are done.
std::vector<bool> wait_within(std::vector<MPI_Request>& requests, double timeout_s, const char* what) {
  std::vector<bool> done(requests.size(), false);
  const auto start = std::chrono::steady_clock::now();
  useconds_t nap = 0;
  for (int tries = 0;; ++tries) {
    bool all = true;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (done[i]) continue;
      int flag = 0;
      check(MPI_Test(&requests[i], &flag, MPI_STATUS_IGNORE), what);
      done[i] = flag != 0;
      all = all && done[i];
    }
    if (all) return done;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) return done;
    if (tries >= 200) {
      nap = nap == 0 ? 50 : std::min<useconds_t>(nap * 2, 5000);
      usleep(nap);
    }
  }
}

// "rank 0: no answer from rank 1 within 5.0 s while ... (a rank stopped, died or is stuck)"
RunError silent(int me, const std::string& from, double timeout_s, const std::string& during) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", timeout_s);
  return RunError("rank " + std::to_string(me) + ": no answer from " + from + " within " + secs + " s " + during +
                  " (a rank stopped, died or is stuck)");
}
}  // namespace

void MpiWorld::wait(MPI_Request& r, const char* what) const {
  if (!(timeout_s_ > 0)) {
    check(MPI_Wait(&r, MPI_STATUS_IGNORE), what);
    return;
  }
  std::vector<MPI_Request> one{r};
  if (!wait_within(one, timeout_s_, what)[0]) throw silent(rank(), roll_call(), timeout_s_, std::string("in ") + what);
}

namespace {
constexpr int kRollCallTag = 0x5e8;

// "1, 3": the ranks (from 1) whose request in `done` did not complete.
std::string missing_ranks(const std::vector<bool>& done) {
  std::string names;
  for (size_t i = 0; i < done.size(); ++i)
    if (!done[i]) names += (names.empty() ? "" : ", ") + std::to_string(i + 1);
  return names;
}
}  // namespace

std::string MpiWorld::roll_call() const {
  const int P = ranks(), me = rank();
  if (me != 0) {
    MPI_Request send;
    MPI_Isend(&me, 1, MPI_INT, 0, kRollCallTag, MPI_COMM_WORLD, &send);
    std::vector<MPI_Request> one{send};
    wait_within(one, timeout_s_, "MPI_Isend");  // rank 0 may be the silent one
    return "the other ranks";
  }
  // Every rank still there entered the collective within about a step of rank 0 and
  // reports once its own wait times out: another timeout covers it.
  std::vector<int> from(size_t(P), 0);
  std::vector<MPI_Request> recv(size_t(P - 1));
  for (int r = 1; r < P; ++r)
    MPI_Irecv(&from[size_t(r)], 1, MPI_INT, r, kRollCallTag, MPI_COMM_WORLD, &recv[size_t(r - 1)]);
  const std::vector<bool> done = wait_within(recv, timeout_s_, "MPI_Irecv");
  for (size_t i = 0; i < recv.size(); ++i)
    if (!done[i]) {
      MPI_Cancel(&recv[i]);
      MPI_Request_free(&recv[i]);
    }
  const std::string silent_ranks = missing_ranks(done);
  return silent_ranks.empty() ? "the other ranks" : "rank " + silent_ranks;
}

void MpiWorld::barrier() {
  MPI_Request r;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &r), "MPI_Ibarrier");
  wait(r, "a barrier");
}

void MpiWorld::sum(double* v, int n) {
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
  wait(r, "a sum across the ranks");
}

double MpiWorld::max(double v) {
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
  wait(r, "a maximum across the ranks");
  return v;
}

void MpiWorld::broadcast(float* v, int64_t n, int root) {
  for (int64_t at = 0; at < n;) {
    const int chunk = static_cast<int>(std::min<int64_t>(n - at, 1 << 30));
    MPI_Request r;
    check(MPI_Ibcast(v + at, chunk, MPI_FLOAT, root, MPI_COMM_WORLD, &r), "MPI_Ibcast");
    wait(r, "a broadcast");
    at += chunk;
  }
}

std::vector<double> MpiWorld::allgather(const std::vector<double>& v) {
  std::vector<double> all(v.size() * size_t(ranks()));
  MPI_Request r;
  check(MPI_Iallgather(v.data(), int(v.size()), MPI_DOUBLE, all.data(), int(v.size()), MPI_DOUBLE, MPI_COMM_WORLD, &r),
        "MPI_Iallgather");
  wait(r, "a gather of every rank's measurements");
  return all;
}

std::vector<std::string> MpiWorld::gather_text(const std::string& text) {
  const int n = as_int(int64_t(text.size()), "gather");
  std::vector<int> sizes(static_cast<size_t>(ranks())), at(static_cast<size_t>(ranks()));
  MPI_Request r;
  check(MPI_Igather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, MPI_COMM_WORLD, &r), "MPI_Igather");
  wait(r, "a gather on rank 0");
  int64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    at[i] = as_int(total, "gather");
    total += sizes[i];
  }
  std::string all(size_t(rank() == 0 ? total : 0), '\0');
  check(MPI_Igatherv(text.data(), n, MPI_CHAR, all.data(), sizes.data(), at.data(), MPI_CHAR, 0, MPI_COMM_WORLD, &r),
        "MPI_Igatherv");
  wait(r, "a gather on rank 0");
  std::vector<std::string> out;
  if (rank() == 0)
    for (size_t i = 0; i < sizes.size(); ++i) out.push_back(all.substr(size_t(at[i]), size_t(sizes[i])));
  return out;
}

namespace {
constexpr int kAgreeTag = 0x5e7;
constexpr const char* kAgreeing = "while the ranks agreed on their set-up";
}  // namespace

int MpiWorld::agree(bool failed) {
  const int P = ranks(), me = rank();
  // Without a timeout, as long as MPI waits.
  const double timeout_s = timeout_s_ > 0 ? timeout_s_ : std::numeric_limits<double>::infinity();
  int decision = -1;
  if (me == 0) {
    std::vector<int> status(size_t(P), 0);
    std::vector<MPI_Request> recv(size_t(P - 1));
    for (int r = 1; r < P; ++r)
      MPI_Irecv(&status[size_t(r)], 1, MPI_INT, r, kAgreeTag, MPI_COMM_WORLD, &recv[size_t(r - 1)]);
    if (const std::string m = missing_ranks(wait_within(recv, timeout_s, "MPI_Irecv")); !m.empty())
      throw silent(me, "rank " + m, timeout_s, kAgreeing);
    status[0] = failed ? 1 : 0;
    for (int r = 0; r < P && decision < 0; ++r)
      if (status[size_t(r)]) decision = r;
    std::vector<MPI_Request> send(size_t(P - 1));
    for (int r = 1; r < P; ++r) MPI_Isend(&decision, 1, MPI_INT, r, kAgreeTag, MPI_COMM_WORLD, &send[size_t(r - 1)]);
    if (const std::string m = missing_ranks(wait_within(send, timeout_s, "MPI_Isend")); !m.empty())
      throw silent(me, "rank " + m, timeout_s, kAgreeing);
  } else {
    int mine = failed ? 1 : 0;
    std::vector<MPI_Request> req(2);
    MPI_Isend(&mine, 1, MPI_INT, 0, kAgreeTag, MPI_COMM_WORLD, &req[0]);
    MPI_Irecv(&decision, 1, MPI_INT, 0, kAgreeTag, MPI_COMM_WORLD, &req[1]);
    const std::vector<bool> done = wait_within(req, timeout_s, "MPI_Irecv");
    if (!done[0] || !done[1]) throw silent(me, "rank 0", timeout_s, kAgreeing);
  }
  return decision;
}

void check_progress_mode(const MpiWorld& world, const ExchangeOptions& opt) {
  if (opt.thread && !world.thread_multiple())
    throw InputError(field("comm.progress") + " thread: this MPI library does not provide MPI_THREAD_MULTIPLE (use " +
                     field("comm.progress") + " poll)");
}

void MpiWorld::abort(int code) {
  std::cerr << std::flush;
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

// ---------------------------------------------------------------------------- Allreduce

Allreduce::Allreduce(MPI_Comm comm, const Topo& topo, int64_t count, const AllreduceSpec& spec, int tag)
    : comm_(comm), tag_(tag), count_(count), spec_(spec) {
  MPI_Comm_rank(comm, &me_);
  half_ = spec.transfer != Precision::FP32;
  const Algorithm& algo = find_algorithm(spec.algorithm, "algorithm");
  mpi_ = algo.name == "mpi";
  as_int(count, "allreduce");
  if (mpi_ && spec.half != AllreduceSpec::Half::Whole)
    throw InputError("algorithm mpi: MPI_Iallreduce has no reduce-scatter or all-gather half; use ring");
  if (spec.half != AllreduceSpec::Half::Whole && topo.ranks == 1 && count > 0) owned_ = {{0, count}};
  if (mpi_ || topo.ranks == 1 || count == 0) return;
  CollectiveArgs args;
  args.topo = topo;
  args.net = Net::uniform(1e-6, 1e-9, 0);  // the schedule does not depend on it
  args.count = count;
  args.elem_bytes = bytes_per_element(spec.transfer);
  args.group = spec.group;
  args.torus_x = spec.torus_x;
  args.variant = spec.variant;
  // NCCL's algorithms run here as their point-to-point schedules (a plan made for an
  // NCCL cluster, executed by the MPI exchange); NCCL's own applicability needs its view
  // of the cluster, which the executor has no use for.
  if (std::string why = algo.not_applicable(args); !why.empty() && algo.library != "nccl")
    throw InputError("algorithm " + spec.algorithm + " does not apply to " + std::to_string(topo.ranks) + " ranks: " + why);
  Schedule s = schedule_of(algo, args);
  if (spec.half != AllreduceSpec::Half::Whole) {
    if (algo.name != "ring" && algo.name != "nccl_ring")
      throw InputError("algorithm " + spec.algorithm + ": a reduce-scatter or all-gather half needs ring or nccl_ring "
                       "(their rounds are a reduce-scatter, then an all-gather)");
    const long mid = long(s.rounds.size() / 2);
    // What each rank sends first in the all-gather half is what it holds reduced: the
    // ranks' ranges must cover the vector once.
    std::vector<std::pair<int64_t, int64_t>> all;
    if (size_t(mid) < s.rounds.size())
      for (const Transfer& t : s.rounds[size_t(mid)].transfers) {
        if (t.src == me_ && t.count > 0) owned_.push_back({t.offset, t.offset + t.count});
        all.push_back({t.offset, t.offset + t.count});
      }
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    int64_t covered = 0;
    for (const auto& [first, end] : all) covered = first == covered ? end : -1;
    if (covered != count) throw RunError("allreduce " + spec.algorithm + ": its halves do not leave every element reduced on one rank");
    std::sort(owned_.begin(), owned_.end());
    owned_.erase(std::unique(owned_.begin(), owned_.end()), owned_.end());
    if (spec.half == AllreduceSpec::Half::ReduceScatter) s.rounds.erase(s.rounds.begin() + mid, s.rounds.end());
    else s.rounds.erase(s.rounds.begin(), s.rounds.begin() + mid);
  }
  int64_t scratch_max = 0;
  for (const Round& r : s.rounds) {
    MyRound mine;
    for (const Transfer& t : r.transfers) {
      if (t.src == me_ && t.dst != me_) mine.sends.push_back({t.dst, t.offset, t.count, t.reduce, false, 0});
      if (t.dst == me_ && t.src != me_) mine.recvs.push_back({t.src, t.offset, t.count, t.reduce, false, 0});
    }
    if (mine.sends.empty() && mine.recvs.empty()) continue;
    // A copy lands in place unless one of this round's sends reads that range (a round's
    // sends carry the state from before the round).
    int64_t scratch = 0;
    for (Piece& p : mine.recvs) {
      bool overlaps = false;
      for (const Piece& q : mine.sends)
        overlaps |= p.offset < q.offset + q.count && q.offset < p.offset + p.count;
      p.in_place = !p.reduce && !overlaps;
      if (!p.in_place) {
        p.scratch = scratch;
        scratch += p.count;
      }
    }
    scratch_max = std::max(scratch_max, scratch);
    rounds_.push_back(std::move(mine));
  }
  if (half_) scratch16_.resize(size_t(scratch_max));
  else scratch32_.resize(size_t(scratch_max));
}

Allreduce::~Allreduce() {
  // A run that ends in an error may leave requests behind; MPI_Abort follows.
  for (MPI_Request& r : requests_)
    if (r != MPI_REQUEST_NULL) MPI_Cancel(&r);
}

void* Allreduce::elem(void* base, int64_t i) const {
  return half_ ? static_cast<void*>(static_cast<uint16_t*>(base) + i) : static_cast<void*>(static_cast<float*>(base) + i);
}

void Allreduce::start(float* data) {
  if (active_) throw RunError("allreduce started twice");
  data_ = data;
  done_ = false;
  active_ = true;
  round_ = 0;
  void* buf = data;
  if (half_) {
    staging_.resize(size_t(count_));
    to_half_bits(spec_.transfer, data, staging_.data(), size_t(count_));
    buf = staging_.data();
  }
  if (mpi_) {
    int size = 1;
    MPI_Comm_size(comm_, &size);
    if (size > 1 && count_ > 0) {
      requests_.assign(1, MPI_REQUEST_NULL);
      MPI_Op op = !half_ ? MPI_SUM : spec_.transfer == Precision::FP16 ? g_sum_fp16 : g_sum_bf16;
      check(MPI_Iallreduce(MPI_IN_PLACE, buf, int(count_), half_ ? MPI_UINT16_T : MPI_FLOAT, op, comm_, &requests_[0]),
            "MPI_Iallreduce");
    }
  } else if (!rounds_.empty()) {
    post_round();
  }
  if (requests_.empty()) complete();
}

void Allreduce::post_round() {
  const MyRound& r = rounds_[round_];
  const MPI_Datatype type = half_ ? MPI_UINT16_T : MPI_FLOAT;
  void* buf = half_ ? static_cast<void*>(staging_.data()) : static_cast<void*>(data_);
  void* scratch = half_ ? static_cast<void*>(scratch16_.data()) : static_cast<void*>(scratch32_.data());
  requests_.assign(r.recvs.size() + r.sends.size(), MPI_REQUEST_NULL);
  size_t k = 0;
  for (const Piece& p : r.recvs)
    check(MPI_Irecv(elem(p.in_place ? buf : scratch, p.in_place ? p.offset : p.scratch), int(p.count), type, p.peer,
                    tag_, comm_, &requests_[k++]),
          "MPI_Irecv");
  for (const Piece& p : r.sends)
    check(MPI_Isend(elem(buf, p.offset), int(p.count), type, p.peer, tag_, comm_, &requests_[k++]), "MPI_Isend");
}

void Allreduce::finish_round() {
  const MyRound& r = rounds_[round_];
  for (const Piece& p : r.recvs) {
    if (p.in_place) continue;
    if (!half_) {
      float* dst = data_ + p.offset;
      const float* src = scratch32_.data() + p.scratch;
      if (p.reduce)
        for (int64_t i = 0; i < p.count; ++i) dst[i] += src[i];
      else
        std::memcpy(dst, src, size_t(p.count) * sizeof(float));
    } else {
      uint16_t* dst = staging_.data() + p.offset;
      const uint16_t* src = scratch16_.data() + p.scratch;
      if (!p.reduce)
        std::memcpy(dst, src, size_t(p.count) * sizeof(uint16_t));
      else
        add_half_bits(spec_.transfer, src, dst, size_t(p.count));
    }
  }
}

void Allreduce::complete() {
  requests_.clear();
  if (half_) from_half_bits(spec_.transfer, staging_.data(), data_, size_t(count_));
  active_ = false;
  done_ = true;
}

bool Allreduce::test() {
  if (!active_) return done_;
  for (;;) {
    int flag = 0;
    check(MPI_Testall(int(requests_.size()), requests_.data(), &flag, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (!flag) return false;
    if (mpi_) break;
    finish_round();
    if (++round_ == rounds_.size()) break;
    post_round();
  }
  complete();
  return true;
}

void Allreduce::wait() {
  while (active_) {
    check(MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    test();
  }
}

std::vector<int> Allreduce::waiting_on() const {
  std::vector<int> peers;
  if (!active_) return peers;
  if (mpi_) return {-1};  // inside the library: unknown
  const MyRound& r = rounds_[round_];
  for (size_t k = 0; k < r.recvs.size(); ++k)
    if (requests_[k] != MPI_REQUEST_NULL) peers.push_back(r.recvs[k].peer);
  for (size_t k = 0; k < r.sends.size(); ++k)
    if (requests_[r.recvs.size() + k] != MPI_REQUEST_NULL) peers.push_back(r.sends[k].peer);
  std::sort(peers.begin(), peers.end());
  peers.erase(std::unique(peers.begin(), peers.end()), peers.end());
  return peers;
}

// ---------------------------------------------------------------------------- PlanExchange

PlanExchange::PlanExchange(MpiWorld& world, float* grads, std::vector<ExchangeBucket> buckets,
                           const ExchangeOptions& opt)
    : world_(world), grads_(grads), buckets_(std::move(buckets)), opt_(opt) {
  check_progress_mode(world, opt);
  int streams = 0;
  for (const auto& b : buckets_) streams = std::max(streams, b.stream + 1);
  stream_comms_.assign(size_t(streams), MPI_COMM_NULL);
  // One communicator per stream: MPI_Iallreduce calls must be posted in the same order on
  // every rank, which holds within a stream but not across streams.
  for (auto& c : stream_comms_) check(MPI_Comm_dup(world.comm(), &c), "MPI_Comm_dup");
  stream_order_.resize(size_t(streams));
  for (size_t i = 0; i < buckets_.size(); ++i) {
    const auto& b = buckets_[i];
    if (i > 0 && b.end < buckets_[i - 1].end)
      throw InputError(field("exchange.buckets") + ": buckets must be in backward order (readiness is a prefix)");
    if (b.pack == ExchangeBucket::Pack::Compute && b.position_ends.size() != size_t(b.end - b.begin))
      throw std::logic_error("exchange: a bucket packed on compute needs the end of each of its positions");
    stream_order_[size_t(b.stream)].push_back(int(i));
    packed_.emplace_back(b.pack == ExchangeBucket::Pack::None ? 0 : size_t(b.count));
    ops_.push_back(std::make_unique<Allreduce>(stream_comms_[size_t(b.stream)], world.layout().topo(), b.count, b.spec,
                                               int(i)));
  }
  // Each stream by `order` (the same on every rank: a stream's collectives must be posted
  // in the same order everywhere).
  for (auto& order : stream_order_)
    std::stable_sort(order.begin(), order.end(), [this](int a, int b) {
      auto key = [this](int i) { return buckets_[size_t(i)].order < 0 ? i : buckets_[size_t(i)].order; };
      return key(a) < key(b);
    });
  timings_.resize(buckets_.size());
  done_ = std::make_unique<std::atomic<bool>[]>(buckets_.size());
  stream_next_.assign(size_t(streams), 0);
  stream_running_.assign(size_t(streams), -1);
  if (opt.thread) thread_ = std::thread([this] { thread_main(); });
}

PlanExchange::~PlanExchange() {
  if (thread_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  ops_.clear();
  for (auto& c : stream_comms_) MPI_Comm_free(&c);
}

void PlanExchange::begin_step() {
  if (opt_.thread) {  // the thread may still be closing the last step after its buckets ran
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return !in_step_ || error_; });
    if (error_) std::rethrow_exception(error_);
  }
  std::lock_guard lock(mutex_);
  origin_ = Clock::now();
  released_.store(false);
  for (size_t b = 0; b < buckets_.size(); ++b) done_[b].store(false, std::memory_order_relaxed);
  ready_count_.store(0);
  done_count_ = 0;
  copied_ = 0;
  std::fill(stream_next_.begin(), stream_next_.end(), 0);
  std::fill(stream_running_.begin(), stream_running_.end(), -1);
  for (auto& t : timings_) t = {};
  in_step_ = true;
}

void PlanExchange::ready(int positions) {
  copy_in_backward(positions);
  int n = ready_count_.load(std::memory_order_relaxed);
  const int before = n;
  const double t = now();
  while (n < int(buckets_.size()) && buckets_[size_t(n)].end <= positions) timings_[size_t(n++)].ready_s = t;
  if (n != before) ready_count_.store(n, std::memory_order_release);
  if (!opt_.thread) {
    pump();
  } else if (n != before) {
    std::lock_guard lock(mutex_);  // the thread checks for new buckets under the lock
    cv_.notify_all();
  }
}

void PlanExchange::copy_in_backward(int positions) {
  for (size_t i = 0; i < buckets_.size() && copied_ < positions; ++i) {
    const ExchangeBucket& b = buckets_[i];
    if (b.pack != ExchangeBucket::Pack::Compute || b.end <= copied_ || b.begin >= positions) continue;
    const int first = std::max(b.begin, copied_), last = std::min(b.end, positions);  // positions [first, last)
    const int64_t from = first == b.begin ? b.offset : b.position_ends[size_t(first - 1 - b.begin)];
    const int64_t to = b.position_ends[size_t(last - 1 - b.begin)];
    std::copy(grads_ + from, grads_ + to, packed_[i].data() + (from - b.offset));
  }
  copied_ = std::max(copied_, positions);
}

float* PlanExchange::start_data(size_t b) {
  const ExchangeBucket& x = buckets_[b];
  if (x.pack == ExchangeBucket::Pack::None) return grads_ + x.offset;
  if (x.pack == ExchangeBucket::Pack::Comm)
    std::copy(grads_ + x.offset, grads_ + x.offset + x.count, packed_[b].data());
  return packed_[b].data();
}

void PlanExchange::ended(size_t b) {
  const ExchangeBucket& x = buckets_[b];
  if (x.pack == ExchangeBucket::Pack::Comm) std::copy(packed_[b].begin(), packed_[b].end(), grads_ + x.offset);
}

// Runs in the communication thread, or in the training thread when polling.
bool PlanExchange::pump() {
  const int ready = ready_count_.load(std::memory_order_acquire);
  for (size_t s = 0; s < stream_order_.size(); ++s) {
    for (;;) {
      int& running = stream_running_[s];
      if (running >= 0) {
        if (!ops_[size_t(running)]->test()) break;
        ended(size_t(running));  // a packed bucket's copy out: the bucket ends with its gradients in place
        timings_[size_t(running)].end_s = now();
        done_[size_t(running)].store(true, std::memory_order_release);
        ++done_count_;
        running = -1;
      }
      if (stream_next_[s] == stream_order_[s].size()) break;
      const int b = stream_order_[s][stream_next_[s]];
      if (b >= ready || (buckets_[size_t(b)].after_step && !released_.load(std::memory_order_acquire))) break;
      ++stream_next_[s];
      running = b;
      float* data = start_data(size_t(b));
      timings_[size_t(b)].start_s = now();
      ops_[size_t(b)]->start(data);
    }
  }
  check_timeouts();
  return done_count_ == int(buckets_.size());
}

void PlanExchange::check_timeouts() {
  const double t = now();
  for (int b : stream_running_) {
    if (b < 0 || t - timings_[size_t(b)].start_s < opt_.timeout_s) continue;
    std::string peers;
    for (int p : ops_[size_t(b)]->waiting_on()) peers += (peers.empty() ? "" : ", ") + (p < 0 ? "?" : std::to_string(p));
    throw RunError("rank " + std::to_string(rank()) + ": the allreduce of bucket " + std::to_string(b) + " (" +
                   ops_[size_t(b)]->algorithm() + ") got no answer from rank " + peers + " in " +
                   std::to_string(t - timings_[size_t(b)].start_s).substr(0, 5) + " s: a rank died or hangs");
  }
}

void PlanExchange::thread_main() {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    if (!in_step_ || error_) {
      cv_.wait(lock);
      continue;
    }
    lock.unlock();
    const int seen = ready_count_.load(std::memory_order_acquire);
    const bool was_released = released_.load(std::memory_order_acquire);
    const int done_before = done_count_;
    bool all = false;
    std::exception_ptr error;
    try {
      all = pump();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (done_count_ != done_before) cv_.notify_all();  // a gated forward may wait for one
    if (error || all) {
      error_ = error;
      in_step_ = !all;
      cv_.notify_all();
      continue;
    }
    if (std::all_of(stream_running_.begin(), stream_running_.end(), [](int b) { return b < 0; }))
      cv_.wait(lock, [&] { return stop_ || ready_count_.load() != seen || released_.load() != was_released; });  // nothing to poll
    else
      cv_.wait_for(lock, std::chrono::duration<double, std::micro>(opt_.poll_us));
  }
}

void PlanExchange::finish() {
  for (const auto& b : buckets_)
    if (b.after_step && !released_.load())
      throw std::logic_error("exchange: finish() before release_held(): the held all-gathers would never run");
  // DDP's copies back: in bucket order, each once its allreduce has ended.
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (buckets_[b].pack != ExchangeBucket::Pack::Compute) continue;
    wait_until([&] { return done_[b].load(std::memory_order_acquire); });
    std::copy(packed_[b].begin(), packed_[b].end(), grads_ + buckets_[b].offset);
  }
  if (opt_.thread) {
    std::unique_lock lock(mutex_);
    cv_.notify_all();
    cv_.wait(lock, [this] { return !in_step_ || error_; });
    if (error_) std::rethrow_exception(error_);
    return;
  }
  while (!pump()) {
  }
  in_step_ = false;
}


bool PlanExchange::buckets_done(int begin, int end) const {
  for (size_t b = 0; b < buckets_.size(); ++b)
    if (buckets_[b].begin < end && begin < buckets_[b].end && !done_[b].load(std::memory_order_acquire)) return false;
  return true;
}

template <class Done>
void PlanExchange::wait_until(const Done& done) {
  if (!opt_.thread) {
    if (!in_step_) return;
    while (!pump() && !done()) {
    }
    if (done_count_ == int(buckets_.size())) in_step_ = false;
    return;
  }
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return !in_step_ || error_ || done(); });
  if (error_) std::rethrow_exception(error_);
}

void PlanExchange::wait_positions(int begin, int end) {
  wait_until([&] { return buckets_done(begin, end); });
}

bool PlanExchange::reductions_done() const {
  for (size_t b = 0; b < buckets_.size(); ++b)
    if (!buckets_[b].after_step && !done_[b].load(std::memory_order_acquire)) return false;
  return true;
}

void PlanExchange::wait_reductions() {
  wait_until([&] { return reductions_done(); });
}

void PlanExchange::release_held() {
  released_.store(true, std::memory_order_release);
  if (!opt_.thread) {
    pump();
    return;
  }
  std::lock_guard lock(mutex_);  // the thread checks for released buckets under the lock
  cv_.notify_all();
}

std::vector<std::pair<int64_t, int64_t>> PlanExchange::owned_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (size_t b = 0; b < buckets_.size(); ++b)
    if (buckets_[b].spec.half == AllreduceSpec::Half::ReduceScatter)
      for (const auto& [first, end] : ops_[b]->owned())
        out.push_back({buckets_[b].offset + first, buckets_[b].offset + end});
  return out;
}

}  // namespace fuseplan::exec
