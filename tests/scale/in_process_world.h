// An in-process world of N ranks for the CPU tests of tests/scale/: N
// threads, each with a Communicator (runtime/communicator.h) installed that
// exchanges host tensors with the others through shared slots and a barrier.
// A rank that fails breaks the barrier, so the others stop with an error
// instead of waiting forever.
#pragma once
#include <fmt/format.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "ir/error.h"
#include "runtime/communicator.h"

namespace moejit::scale_test {

// What every rank shares: a reusable barrier that any rank can break (a rank
// that fails wakes the others with an error instead of leaving them waiting),
// and one slot per rank for what it publishes to the collective.
class World {
 public:
  explicit World(int size) : size_(size), published_(static_cast<std::size_t>(size)), counts_(static_cast<std::size_t>(size)) {}
  int size() const { return size_; }

  void wait() {
    std::unique_lock lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      changed_.notify_all();
    } else if (!changed_.wait_for(lock, std::chrono::seconds(30),
                                  [&] { return generation_ != generation || broken_; })) {
      throw Error("in-process world: a rank waited 30 s for the others (a collective that not every rank made)");
    }
    if (broken_) throw Error("in-process world: another rank failed");
  }
  void abort() {
    std::lock_guard lock(mutex_);
    broken_ = true;
    changed_.notify_all();
  }

  std::vector<const HostTensor*>& published() { return published_; }
  std::vector<std::vector<std::int32_t>>& counts() { return counts_; }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  long generation_ = 0;
  bool broken_ = false;
  std::vector<const HostTensor*> published_;
  std::vector<std::vector<std::int32_t>> counts_;
};

inline std::int64_t rows_of(const HostTensor& t) { return t.shape().empty() ? 1 : t.shape()[0]; }

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(World& world, int rank) : world_(world), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_.size(); }

  void all_reduce_sum(const HostTensor& x, HostTensor& y) override {
    publish(x);
    HostTensor sum = x;  // summed in rank order, so every rank gets the same bits
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      double total = 0.0;
      for (int s = 0; s < world_.size(); ++s) total += world_.published()[static_cast<std::size_t>(s)]->get(i);
      sum.set(i, total);
    }
    world_.wait();
    std::memcpy(y.raw(), sum.raw(), sum.bytes());
  }

  void all_gather(const HostTensor& x, HostTensor& y) override {
    publish(x);
    for (int s = 0; s < world_.size(); ++s)
      std::memcpy(y.raw() + static_cast<std::size_t>(s) * x.bytes(), world_.published()[static_cast<std::size_t>(s)]->raw(),
                  x.bytes());
    world_.wait();
  }

  void reduce_scatter_sum(const HostTensor& x, HostTensor& y) override {
    publish(x);
    const std::int64_t n = y.numel(), first = rank_ * n;
    for (std::int64_t i = 0; i < n; ++i) {
      double total = 0.0;
      for (int s = 0; s < world_.size(); ++s) total += world_.published()[static_cast<std::size_t>(s)]->get(first + i);
      y.set(i, total);
    }
    world_.wait();
  }

  void all_to_all(const HostTensor& x, std::span<const std::int32_t> send_counts, HostTensor& y,
                  std::span<std::int32_t> recv_counts) override {
    world_.counts()[static_cast<std::size_t>(rank_)].assign(send_counts.begin(), send_counts.end());
    publish(x);
    const std::size_t row_bytes = x.bytes() / static_cast<std::size_t>(std::max<std::int64_t>(1, rows_of(x)));
    std::vector<std::byte> received(y.bytes(), std::byte{0});
    std::int64_t cursor = 0;
    std::string overflow;
    for (int s = 0; s < world_.size(); ++s) {
      const auto& counts = world_.counts()[static_cast<std::size_t>(s)];
      std::int64_t first = 0;
      for (int d = 0; d < rank_; ++d) first += counts[static_cast<std::size_t>(d)];
      const std::int64_t n = counts[static_cast<std::size_t>(rank_)];
      recv_counts[static_cast<std::size_t>(s)] = static_cast<std::int32_t>(n);
      if (cursor + n > rows_of(y)) {
        overflow = fmt::format("received {} rows, more than the {} rows of the result", cursor + n, rows_of(y));
        break;
      }
      std::memcpy(received.data() + static_cast<std::size_t>(cursor) * row_bytes,
                  world_.published()[static_cast<std::size_t>(s)]->raw() + static_cast<std::size_t>(first) * row_bytes,
                  static_cast<std::size_t>(n) * row_bytes);
      cursor += n;
    }
    world_.wait();
    if (!overflow.empty()) throw Error(overflow);
    std::memcpy(y.raw(), received.data(), received.size());
  }

 private:
  void publish(const HostTensor& x) {
    world_.published()[static_cast<std::size_t>(rank_)] = &x;
    world_.wait();
  }
  World& world_;
  int rank_;
};

// Runs body(rank) on `size` threads, each with its rank's communicator
// installed; rethrows the first failure after every thread has ended.
template <class Body>
void run_ranks(int size, Body body) {
  World world(size);
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(world, r);
      ScopedCommunicator installed(&comm);
      try {
        body(r);
      } catch (...) {
        failures[static_cast<std::size_t>(r)] = std::current_exception();
        world.abort();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& f : failures)
    if (f) std::rethrow_exception(f);
}

}  // namespace moejit::scale_test
