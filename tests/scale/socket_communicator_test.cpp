// The socket communicator (runtime/socket_communicator.h): each collective's
// values on 3 ranks, and the failures that must end every rank's wait with a
// message naming who did what (a rank gone, a rank too slow, two ranks making
// different collectives) instead of a hang.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>

#include "ir/error.h"
#include "scale/socket_world.h"

using namespace moejit;
using namespace moejit::scale_test;
using Catch::Matchers::Contains;

namespace {

HostTensor floats(Shape shape, const std::vector<double>& values) {
  return HostTensor::from_doubles(TensorType{DType::f32, std::move(shape)}, values);
}

void require_no_failure(const std::vector<std::exception_ptr>& failures) {
  for (std::size_t r = 0; r < failures.size(); ++r) {
    INFO("rank " << r << ": " << failure_message(failures[r]));
    REQUIRE(!failures[r]);
  }
}

}  // namespace

TEST_CASE("socket communicator: all_reduce, all_gather, reduce_scatter, all_to_all on 3 ranks", "[scale][socket]") {
  constexpr int n = 3;
  std::vector<std::string> problems(n);
  auto failures = run_socket_ranks(n, std::chrono::seconds(20), [&](int r, Communicator& comm) {
    auto note = [&](bool ok, const std::string& what) {
      if (!ok && problems[static_cast<std::size_t>(r)].empty()) problems[static_cast<std::size_t>(r)] = what;
    };
    note(comm.rank() == r && comm.world_size() == n, "rank / world_size");
    // all_reduce: x = [r, 10 r, 1] -> [0+1+2, 0+10+20, 3]
    HostTensor x = floats({3}, {1.0 * r, 10.0 * r, 1.0}), y = floats({3}, {0, 0, 0});
    comm.all_reduce_sum(x, y);
    note(y.get(0) == 3 && y.get(1) == 30 && y.get(2) == 3, "all_reduce");
    // all_gather: [2] per rank -> [6], rank s's at 2 s
    HostTensor g = floats({2}, {100.0 + r, 200.0 + r}), gathered = floats({6}, std::vector<double>(6, 0.0));
    comm.all_gather(g, gathered);
    for (int s = 0; s < n; ++s)
      note(gathered.get(2 * s) == 100 + s && gathered.get(2 * s + 1) == 200 + s, "all_gather");
    // reduce_scatter: x [3 * 2] = r everywhere + position -> rank d gets sum_s (s + 2 d + i)
    std::vector<double> rs(6);
    for (int i = 0; i < 6; ++i) rs[static_cast<std::size_t>(i)] = r + i;
    HostTensor scattered = floats({2}, {0, 0});
    comm.reduce_scatter_sum(floats({6}, rs), scattered);
    for (int i = 0; i < 2; ++i) note(scattered.get(i) == (0 + 1 + 2) + 3 * (2 * r + i), "reduce_scatter");
    // all_to_all: rank s sends s + d + 1 rows of width 2 to rank d, row value 100 s + 10 d + i
    std::vector<std::int32_t> send(n);
    std::vector<double> rows;
    for (int d = 0; d < n; ++d) {
      send[static_cast<std::size_t>(d)] = r + d + 1;
      for (int i = 0; i <= r + d; ++i) rows.insert(rows.end(), {100.0 * r + 10 * d + i, -1.0});
    }
    const auto sent_rows = static_cast<std::int64_t>(rows.size() / 2);
    rows.resize(rows.size() + 4, 7.0);  // two rows past the counted ones: not sent
    HostTensor a2a_x = floats({sent_rows + 2, 2}, rows);
    HostTensor a2a_y = floats({20, 2}, std::vector<double>(40, 5.0));
    std::vector<std::int32_t> recv(n, -1);
    comm.all_to_all(a2a_x, send, a2a_y, recv);
    std::int64_t row = 0;
    for (int s = 0; s < n; ++s) {
      note(recv[static_cast<std::size_t>(s)] == s + r + 1, "all_to_all receive counts");
      for (int i = 0; i <= s + r; ++i, ++row)
        note(a2a_y.get(2 * row) == 100.0 * s + 10 * r + i && a2a_y.get(2 * row + 1) == -1.0, "all_to_all rows");
    }
    for (; row < 20; ++row) note(a2a_y.get(2 * row) == 0 && a2a_y.get(2 * row + 1) == 0, "all_to_all zero tail");
  });
  require_no_failure(failures);
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    CHECK(problems[static_cast<std::size_t>(r)] == "");
  }
}

TEST_CASE("socket communicator: a rank that is gone ends the others' collective at once, naming it", "[scale][socket]") {
  const auto start = std::chrono::steady_clock::now();
  auto failures = run_socket_ranks(3, std::chrono::seconds(60), [&](int r, Communicator& comm) {
    if (r == 1) return;  // leaves: its socket closes, as a killed process's does
    HostTensor x = floats({1}, {1.0}), y = x;
    comm.all_reduce_sum(x, y);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 5);  // not the 60 s timeout
  CHECK_THAT(failure_message(failures[0]), Contains("rank 0: communicator: rank 1 closed its connection during "
                                                    "all_reduce #1"));
  CHECK_THAT(failure_message(failures[2]), Contains("rank 2: communicator: all_reduce #1: the hub (rank 0) failed"));
  CHECK_THAT(failure_message(failures[2]), Contains("rank 1 closed its connection"));
  CHECK(!failures[1]);
}

TEST_CASE("socket communicator: the hub gone ends every other rank's wait", "[scale][socket]") {
  auto failures = run_socket_ranks(2, std::chrono::seconds(60), [&](int r, Communicator& comm) {
    if (r == 0) return;
    HostTensor x = floats({4}, {1, 2, 3, 4}), y = floats({8}, std::vector<double>(8, 0.0));
    comm.all_gather(x, y);
  });
  CHECK_THAT(failure_message(failures[1]),
             Contains("rank 1: communicator: lost the connection to rank 0 during all_gather #1"));
}

TEST_CASE("socket communicator: a rank too slow for the timeout, and ranks in different collectives", "[scale][socket]") {
  SECTION("timeout") {
    auto failures = run_socket_ranks(2, std::chrono::milliseconds(300), [&](int r, Communicator& comm) {
      if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      HostTensor x = floats({1}, {1.0}), y = x;
      comm.all_reduce_sum(x, y);
    });
    CHECK_THAT(failure_message(failures[0]), Contains("all_reduce #1: waited 0.3 s for rank 1"));
    CHECK(failures[1]);  // the hub told it, or it found the hub gone
  }
  SECTION("mismatch") {
    auto failures = run_socket_ranks(2, std::chrono::seconds(20), [&](int r, Communicator& comm) {
      HostTensor x = floats({2}, {1.0, 2.0}), y = x, gathered = floats({4}, {0, 0, 0, 0});
      if (r == 0) comm.all_reduce_sum(x, y);
      else comm.all_gather(x, gathered);
    });
    CHECK_THAT(failure_message(failures[0]), Contains("rank 1 made all_gather #1 where this rank made all_reduce #1"));
    CHECK_THAT(failure_message(failures[1]), Contains("the hub (rank 0) failed"));
  }
  SECTION("different sizes") {
    auto failures = run_socket_ranks(2, std::chrono::seconds(20), [&](int r, Communicator& comm) {
      HostTensor x = floats({static_cast<std::int64_t>(r + 1)}, std::vector<double>(static_cast<std::size_t>(r + 1), 1.0));
      HostTensor y = x;
      comm.all_reduce_sum(x, y);
    });
    CHECK_THAT(failure_message(failures[0]), Contains("rank 1 sends 8 bytes, rank 0 4"));
  }
}

TEST_CASE("socket communicator: bad options and environment say what they expected", "[scale][socket]") {
  CHECK_THROWS_WITH(connect_socket_world({.rank = 2, .world_size = 2}),
                    Contains("expected 0 <= rank < world_size, found rank 2 of 2"));
  CHECK_THROWS_WITH(connect_socket_world({.rank = 0, .world_size = 2, .address = "udp:x"}),
                    Contains("expected an address unix:PATH or tcp:HOST:PORT, found 'udp:x'"));
  CHECK_THROWS_WITH(connect_socket_world({.rank = 1, .world_size = 2, .address = "tcp:localhost"}),
                    Contains("expected tcp:HOST:PORT"));
  // No rank 0: a joining rank gives up after connect_timeout, saying where it looked.
  CHECK_THROWS_WITH(connect_socket_world({.rank = 1, .world_size = 2, .address = "unix:" + fresh_socket_path(),
                                          .connect_timeout = std::chrono::milliseconds(300)}),
                    Contains("rank 1: communicator: waited 0.3 s for rank 0 at unix:"));
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "1", 1);
  ::unsetenv("MOEJIT_RENDEZVOUS");
  ::unsetenv("MASTER_ADDR");
  CHECK_THROWS_WITH(socket_world_options_from_env(), Contains("expected MOEJIT_RENDEZVOUS (unix:PATH) or MASTER_ADDR"));
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", "29500", 1);
  CHECK(socket_world_options_from_env().address == "tcp:127.0.0.1:29500");
  ::setenv("RANK", "x", 1);
  CHECK_THROWS_WITH(socket_world_options_from_env(), Contains("RANK: expected an integer, found 'x'"));
  ::setenv("RANK", "3", 1);
  CHECK_THROWS_WITH(socket_world_options_from_env(), Contains("expected 0 <= RANK < WORLD_SIZE, found RANK 3"));
  for (const char* name : {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(name);
}

TEST_CASE("socket communicator: two ranks over TCP (MASTER_ADDR / MASTER_PORT)", "[scale][socket]") {
  // A port from the pid, away from the usual 29500; retried on another if taken.
  const int port = 20000 + static_cast<int>(::getpid() % 20000);
  std::vector<double> got(2, 0.0);
  std::vector<std::exception_ptr> failures(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        auto comm = connect_socket_world({.rank = r, .world_size = 2, .address = fmt::format("tcp:127.0.0.1:{}", port),
                                          .connect_timeout = std::chrono::seconds(10)});
        HostTensor x = floats({1}, {r + 1.0}), y = x;
        comm->all_reduce_sum(x, y);
        got[static_cast<std::size_t>(r)] = y.get(0);
      } catch (...) {
        failures[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  if (failure_message(failures[0]).find("cannot listen") != std::string::npos) {
    WARN("SKIPPED: port " << port << " is taken: " << failure_message(failures[0]));
    return;
  }
  require_no_failure(failures);
  CHECK(got == std::vector<double>{3.0, 3.0});
}
