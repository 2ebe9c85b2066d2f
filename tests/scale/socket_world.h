// N ranks as N threads of the test, each with its own socket communicator
// (runtime/socket_communicator.h) over a Unix socket: the same code the
// processes of `gpt_moe train --nproc N` run, without starting processes.
#pragma once
#include <unistd.h>

#include <atomic>
#include <exception>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "runtime/socket_communicator.h"

namespace moejit::scale_test {

// A fresh socket path (short: Unix socket paths have ~100 characters).
inline std::string fresh_socket_path() {
  static std::atomic<int> counter{0};
  return (std::filesystem::temp_directory_path() / ("mjsock-" + std::to_string(::getpid()) + "-" +
                                                    std::to_string(counter++)))
      .string();
}

// Runs body(rank, communicator) on `size` threads; returns each rank's failure (null: none).
template <class Body>
std::vector<std::exception_ptr> run_socket_ranks(int size, std::chrono::milliseconds timeout, Body body) {
  const std::string address = "unix:" + fresh_socket_path();
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<Communicator> comm = connect_socket_world(
            {.rank = r, .world_size = size, .address = address, .connect_timeout = std::chrono::seconds(20),
             .timeout = timeout});
        body(r, *comm);
      } catch (...) {
        failures[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return failures;
}

// The message of a failure, or "" when there is none.
inline std::string failure_message(const std::exception_ptr& failure) {
  if (!failure) return "";
  try {
    std::rethrow_exception(failure);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "?";
}

}  // namespace moejit::scale_test
