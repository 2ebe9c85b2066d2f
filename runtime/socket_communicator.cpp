// The socket communicator (socket_communicator.h): a star around rank 0,
// every read and write bounded by a deadline.
#include "runtime/socket_communicator.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "ir/error.h"

namespace moejit {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint32_t kMagic = 0x6d6a636d;  // "mjcm"

enum class Kind : std::uint32_t { hello = 1, all_reduce, all_gather, reduce_scatter, all_to_all, error };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::hello: return "the handshake";
    case Kind::all_reduce: return "all_reduce";
    case Kind::all_gather: return "all_gather";
    case Kind::reduce_scatter: return "reduce_scatter";
    case Kind::all_to_all: return "all_to_all";
    case Kind::error: return "an error report";
  }
  return "an unknown message";
}

// Every message: this header, then `counts` int32 values, then `bytes` bytes.
struct Header {
  std::uint32_t magic = kMagic;
  Kind kind = Kind::hello;
  std::uint64_t seq = 0;        // the collective's number (the same on every rank)
  std::uint64_t bytes = 0;      // payload bytes
  std::uint64_t row_bytes = 0;  // all_to_all: bytes per row; hello: world_size
  std::uint32_t counts = 0;     // int32 values after the header
  std::int32_t rank = 0;        // the sender (hello: the connecting rank)
};

// A bounded read/write on a socket (the handshake, a last error report).
bool io_before(int fd, void* data, std::size_t n, bool reading, Clock::time_point deadline) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pfd{fd, static_cast<short>(reading ? POLLIN : POLLOUT), 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (ready <= 0) continue;
    const ssize_t done = reading ? ::recv(fd, p, n, 0) : ::send(fd, p, n, MSG_NOSIGNAL);
    if (done == 0) return false;
    if (done < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return false;
    }
    p += done;
    n -= static_cast<std::size_t>(done);
  }
  return true;
}

std::int64_t rows_of(const HostTensor& t) { return t.shape().empty() ? 1 : t.shape()[0]; }

class SocketCommunicator final : public Communicator {
 public:
  SocketCommunicator(const SocketWorldOptions& options, std::vector<int> fds)
      : options_(options), fds_(std::move(fds)) {}
  ~SocketCommunicator() override {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  void all_reduce_sum(const HostTensor& x, HostTensor& y) override {
    check_same_size(x, y, "all_reduce");
    collective(Kind::all_reduce, x, {}, 0, [&](const std::vector<Part>& parts, std::vector<Part>& results) {
      HostTensor sum = x;  // summed in rank order: every rank gets the same bits
      if (x.dtype() == DType::f32) {  // the gradients: typed, without a tensor per element
        auto out = sum.values<float>();
        for (std::size_t i = 0; i < out.size(); ++i) {
          double total = 0.0;
          for (const Part& p : parts) {
            float v;
            std::memcpy(&v, p.payload.data() + i * sizeof(float), sizeof v);
            total += v;
          }
          out[i] = static_cast<float>(total);
        }
      } else {
        for (std::int64_t i = 0; i < x.numel(); ++i) {
          double total = 0.0;
          for (const Part& p : parts) total += element(x, p.payload, i);
          sum.set(i, total);
        }
      }
      for (Part& r : results) r.payload.assign(sum.raw(), sum.raw() + sum.bytes());
    });
    std::memcpy(y.raw(), result_.payload.data(), y.bytes());
  }

  void all_gather(const HostTensor& x, HostTensor& y) override {
    if (y.bytes() != x.bytes() * static_cast<std::size_t>(world_size()))
      throw fail(fmt::format("all_gather: expected a result of {} x {} bytes, found {} bytes", world_size(), x.bytes(),
                             y.bytes()));
    collective(Kind::all_gather, x, {}, 0, [&](const std::vector<Part>& parts, std::vector<Part>& results) {
      std::vector<std::byte> joined;
      for (const Part& p : parts) joined.insert(joined.end(), p.payload.begin(), p.payload.end());
      for (Part& r : results) r.payload = joined;
    });
    std::memcpy(y.raw(), result_.payload.data(), y.bytes());
  }

  void reduce_scatter_sum(const HostTensor& x, HostTensor& y) override {
    if (x.numel() != y.numel() * world_size())
      throw fail(fmt::format("reduce_scatter: expected {} x {} elements in, found {}", world_size(), y.numel(), x.numel()));
    collective(Kind::reduce_scatter, x, {}, 0, [&](const std::vector<Part>& parts, std::vector<Part>& results) {
      const std::int64_t n = y.numel();
      for (int d = 0; d < world_size(); ++d) {
        HostTensor piece = y;
        for (std::int64_t i = 0; i < n; ++i) {
          double total = 0.0;
          for (const Part& p : parts) total += element(x, p.payload, d * n + i);
          piece.set(i, total);
        }
        results[static_cast<std::size_t>(d)].payload.assign(piece.raw(), piece.raw() + piece.bytes());
      }
    });
    std::memcpy(y.raw(), result_.payload.data(), y.bytes());
  }

  void all_to_all(const HostTensor& x, std::span<const std::int32_t> send_counts, HostTensor& y,
                  std::span<std::int32_t> recv_counts) override {
    const int n = world_size();
    if (static_cast<int>(send_counts.size()) != n || static_cast<int>(recv_counts.size()) != n)
      throw fail(fmt::format("all_to_all: expected {} send and receive counts, found {} and {}", n, send_counts.size(),
                             recv_counts.size()));
    const std::int64_t rows = rows_of(x);
    const std::size_t row_bytes = rows > 0 ? x.bytes() / static_cast<std::size_t>(rows) : 0;
    std::int64_t sending = 0;
    for (std::int32_t c : send_counts) {
      if (c < 0) throw fail(fmt::format("all_to_all: expected send counts >= 0, found {}", c));
      sending += c;
    }
    if (sending > rows)
      throw fail(fmt::format("all_to_all: the send counts add up to {} rows, more than the {} rows of x", sending, rows));
    if (rows_of(y) > 0 && y.bytes() / static_cast<std::size_t>(rows_of(y)) != row_bytes)
      throw fail(fmt::format("all_to_all: expected rows of {} bytes in the result (those of x), found {}", row_bytes,
                             y.bytes() / static_cast<std::size_t>(rows_of(y))));
    const std::vector<std::int32_t> counts(send_counts.begin(), send_counts.end());
    collective(Kind::all_to_all, x, counts, static_cast<std::size_t>(sending) * row_bytes,
               [&](const std::vector<Part>& parts, std::vector<Part>& results) {
                 for (const Part& p : parts)
                   if (p.row_bytes != row_bytes)
                     throw fail(fmt::format("all_to_all #{}: rank {} sends rows of {} bytes, rank 0 rows of {}", seq_,
                                            p.rank, p.row_bytes, row_bytes));
                 for (int d = 0; d < n; ++d) {
                   Part& r = results[static_cast<std::size_t>(d)];
                   r.counts.assign(static_cast<std::size_t>(n), 0);
                   for (int s = 0; s < n; ++s) {
                     const Part& p = parts[static_cast<std::size_t>(s)];
                     const std::int64_t first =
                         std::accumulate(p.counts.begin(), p.counts.begin() + d, std::int64_t{0});
                     const std::int32_t count = p.counts[static_cast<std::size_t>(d)];
                     r.counts[static_cast<std::size_t>(s)] = count;
                     const auto* begin = p.payload.data() + static_cast<std::size_t>(first) * row_bytes;
                     r.payload.insert(r.payload.end(), begin, begin + static_cast<std::size_t>(count) * row_bytes);
                   }
                 }
               });
    const std::int64_t received = static_cast<std::int64_t>(result_.payload.size() / std::max<std::size_t>(1, row_bytes));
    if (received > rows_of(y))
      throw fail(fmt::format("all_to_all #{}: received {} rows, more than the {} rows of the result", seq_, received,
                             rows_of(y)));
    std::memset(y.raw(), 0, y.bytes());
    std::memcpy(y.raw(), result_.payload.data(), result_.payload.size());
    for (int s = 0; s < n; ++s) recv_counts[static_cast<std::size_t>(s)] = result_.counts[static_cast<std::size_t>(s)];
  }

 private:
  // One rank's contribution to a collective, or one rank's result.
  struct Part {
    int rank = 0;
    std::size_t row_bytes = 0;
    std::vector<std::int32_t> counts;
    std::vector<std::byte> payload;
  };

  Error fail(const std::string& what) const { return Error(fmt::format("rank {}: communicator: {}", rank(), what)); }

  static double element(const HostTensor& like, const std::vector<std::byte>& payload, std::int64_t i) {
    // Read element i of a payload laid out like `like` (same dtype).
    HostTensor one(TensorType{like.dtype(), {}});
    const std::size_t size = one.bytes();
    std::memcpy(one.raw(), payload.data() + static_cast<std::size_t>(i) * size, size);
    return one.get(0);
  }

  void check_same_size(const HostTensor& x, const HostTensor& y, const char* what) const {
    if (x.bytes() != y.bytes())
      throw fail(fmt::format("{}: expected a result of {} bytes (x's), found {}", what, x.bytes(), y.bytes()));
  }

  // The peer rank behind socket i: the hub's fds_[i] is rank i + 1; a peer's only socket is the hub's.
  int peer_of(std::size_t i) const { return rank() == 0 ? static_cast<int>(i) + 1 : 0; }

  std::string context(Kind kind) const { return fmt::format("{} #{}", kind_name(kind), seq_); }

  // Every rank: its part goes to the hub; the hub calls compute(parts in rank
  // order, results to fill per rank) and sends each rank its result, which
  // ends up in result_.
  template <class Compute>
  void collective(Kind kind, const HostTensor& x, const std::vector<std::int32_t>& counts, std::size_t send_bytes,
                  Compute compute) {
    ++seq_;
    if (kind != Kind::all_to_all) send_bytes = x.bytes();
    const std::size_t row_bytes = rows_of(x) > 0 ? x.bytes() / static_cast<std::size_t>(rows_of(x)) : 0;
    if (rank() != 0) {
      Header h{.kind = kind, .seq = seq_, .bytes = send_bytes, .row_bytes = row_bytes,
               .counts = static_cast<std::uint32_t>(counts.size()), .rank = rank()};
      send_message(0, h, counts, x.raw(), kind);
      result_ = receive_message(0, kind);
      return;
    }
    std::vector<Part> parts(static_cast<std::size_t>(world_size()));
    parts[0] = {0, row_bytes, counts, std::vector<std::byte>(x.raw(), x.raw() + send_bytes)};
    try {
      for (std::size_t i = 0; i < fds_.size(); ++i) {
        Part p = receive_message(i, kind);
        if (kind != Kind::all_to_all && p.payload.size() != send_bytes)
          throw fail(fmt::format("{}: rank {} sends {} bytes, rank 0 {} (a different tensor)", context(kind), p.rank,
                                 p.payload.size(), send_bytes));
        if (kind == Kind::all_to_all && p.counts.size() != counts.size())
          throw fail(fmt::format("{}: rank {} sends {} counts, expected {}", context(kind), p.rank, p.counts.size(),
                                 counts.size()));
        parts[i + 1] = std::move(p);
      }
      std::vector<Part> results(parts.size());
      compute(parts, results);
      for (std::size_t i = 0; i < fds_.size(); ++i) {
        const Part& r = results[i + 1];
        Header h{.kind = kind, .seq = seq_, .bytes = r.payload.size(), .row_bytes = row_bytes,
                 .counts = static_cast<std::uint32_t>(r.counts.size()), .rank = 0};
        send_message(i, h, r.counts, r.payload.data(), kind);
      }
      result_ = std::move(results[0]);
    } catch (const Error& err) {
      report_to_peers(err.what());
      throw;
    }
  }

  // The hub tells every peer why the collective failed (best effort, short
  // deadline), so their message says what happened rather than "closed".
  void report_to_peers(const std::string& what) {
    for (std::size_t i = 0; i < fds_.size(); ++i) {
      Header h{.kind = Kind::error, .seq = seq_, .bytes = what.size(), .rank = 0};
      try {
        write_all(i, &h, sizeof h, Clock::now() + std::chrono::seconds(1), Kind::error);
        write_all(i, what.data(), what.size(), Clock::now() + std::chrono::seconds(1), Kind::error);
      } catch (const Error&) {
      }
    }
  }

  void send_message(std::size_t i, const Header& h, const std::vector<std::int32_t>& counts, const void* payload,
                    Kind kind) {
    const auto deadline = Clock::now() + options_.timeout;
    write_all(i, &h, sizeof h, deadline, kind);
    write_all(i, counts.data(), counts.size() * sizeof(std::int32_t), deadline, kind);
    write_all(i, payload, h.bytes, deadline, kind);
  }

  Part receive_message(std::size_t i, Kind kind) {
    const auto deadline = Clock::now() + options_.timeout;
    Header h;
    read_all(i, &h, sizeof h, deadline, kind);
    if (h.magic != kMagic) throw fail(fmt::format("{}: rank {} sent a malformed message", context(kind), peer_of(i)));
    if (h.kind == Kind::error) {
      std::string text(h.bytes, '\0');
      read_all(i, text.data(), text.size(), deadline, kind);
      throw fail(fmt::format("{}: the hub (rank 0) failed: {}", context(kind), text));
    }
    if (h.kind != kind || h.seq != seq_)
      throw fail(fmt::format("rank {} made {} #{} where this rank made {} #{} (the ranks run different steps)",
                             peer_of(i), kind_name(h.kind), h.seq, kind_name(kind), seq_));
    Part p{h.rank, h.row_bytes, std::vector<std::int32_t>(h.counts), std::vector<std::byte>(h.bytes)};
    read_all(i, p.counts.data(), p.counts.size() * sizeof(std::int32_t), deadline, kind);
    read_all(i, p.payload.data(), p.payload.size(), deadline, kind);
    return p;
  }

  void wait_for(std::size_t i, short events, Clock::time_point deadline, Kind kind) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0)
        throw fail(fmt::format("{}: waited {} s for rank {} (it is stuck or far behind; MOEJIT_COMM_TIMEOUT sets the "
                               "limit)",
                               context(kind), options_.timeout.count() / 1000.0, peer_of(i)));
      pollfd p{fds_[i], events, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (ready > 0) return;
      if (ready < 0 && errno != EINTR) throw fail(fmt::format("{}: poll: {}", context(kind), std::strerror(errno)));
    }
  }

  [[noreturn]] void lost(std::size_t i, Kind kind, const char* why) {
    if (rank() != 0) throw_hub_report(i, kind);  // the hub may have said why before it closed
    if (rank() == 0)
      throw fail(fmt::format("rank {} closed its connection during {} ({}: it exited or was killed)", peer_of(i),
                             context(kind), why));
    throw fail(fmt::format("lost the connection to rank 0 during {} ({}: rank 0 exited or was killed)", context(kind),
                           why));
  }

  // A non-hub rank whose write failed: the hub's error report, if it sent one
  // before closing (it is already in this socket's receive queue), thrown.
  void throw_hub_report(std::size_t i, Kind kind) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(200);
    Header h;
    if (!io_before(fds_[i], &h, sizeof h, true, deadline) || h.magic != kMagic || h.kind != Kind::error ||
        h.bytes > (1 << 20))
      return;
    std::string text(h.bytes, '\0');
    if (!io_before(fds_[i], text.data(), text.size(), true, deadline)) return;
    throw fail(fmt::format("{}: the hub (rank 0) failed: {}", context(kind), text));
  }

  void write_all(std::size_t i, const void* data, std::size_t n, Clock::time_point deadline, Kind kind) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      wait_for(i, POLLOUT, deadline, kind);
      const ssize_t sent = ::send(fds_[i], p, n, MSG_NOSIGNAL);
      if (sent < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        lost(i, kind, std::strerror(errno));
      }
      p += sent;
      n -= static_cast<std::size_t>(sent);
    }
  }

  void read_all(std::size_t i, void* data, std::size_t n, Clock::time_point deadline, Kind kind) {
    auto* p = static_cast<char*>(data);
    while (n > 0) {
      wait_for(i, POLLIN, deadline, kind);
      const ssize_t got = ::recv(fds_[i], p, n, 0);
      if (got == 0) lost(i, kind, "end of stream");
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        lost(i, kind, std::strerror(errno));
      }
      p += got;
      n -= static_cast<std::size_t>(got);
    }
  }

  SocketWorldOptions options_;
  std::vector<int> fds_;  // the hub: ranks 1..N-1; the others: the hub
  std::uint64_t seq_ = 0;
  Part result_;
};

// ---- connecting ----

struct Address {
  int family = AF_UNIX;
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string unix_path;  // AF_UNIX only
};

Error setup_error(const SocketWorldOptions& o, const std::string& what) {
  return Error(fmt::format("rank {}: communicator: {}", o.rank, what));
}

Address resolve(const SocketWorldOptions& o) {
  Address a;
  if (o.address.starts_with("unix:")) {
    a.unix_path = o.address.substr(5);
    sockaddr_un un{};
    if (a.unix_path.empty() || a.unix_path.size() >= sizeof un.sun_path)
      throw setup_error(o, fmt::format("expected a Unix socket path of 1 to {} characters, found '{}'",
                                       sizeof un.sun_path - 1, a.unix_path));
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, a.unix_path.c_str(), a.unix_path.size() + 1);
    std::memcpy(&a.storage, &un, sizeof un);
    a.length = sizeof un;
    return a;
  }
  if (o.address.starts_with("tcp:")) {
    const std::string rest = o.address.substr(4);
    const std::size_t colon = rest.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
      throw setup_error(o, fmt::format("expected tcp:HOST:PORT, found '{}'", o.address));
    const std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
    if (rc != 0 || !found)
      throw setup_error(o, fmt::format("cannot resolve {}:{}: {}", host, port, ::gai_strerror(rc)));
    a.family = found->ai_family;
    std::memcpy(&a.storage, found->ai_addr, found->ai_addrlen);
    a.length = found->ai_addrlen;
    ::freeaddrinfo(found);
    return a;
  }
  throw setup_error(o, fmt::format("expected an address unix:PATH or tcp:HOST:PORT, found '{}'", o.address));
}

void tune(int fd, int family) {
  if (family != AF_UNIX) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
}

std::vector<int> serve(const SocketWorldOptions& o, const Address& a) {
  const auto deadline = Clock::now() + o.connect_timeout;
  const int listener = ::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) throw setup_error(o, fmt::format("socket: {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (a.family == AF_UNIX) ::unlink(a.unix_path.c_str());  // a stale socket of an earlier run
  if (::bind(listener, reinterpret_cast<const sockaddr*>(&a.storage), a.length) != 0 ||
      ::listen(listener, o.world_size) != 0) {
    const std::string why = std::strerror(errno);
    ::close(listener);
    throw setup_error(o, fmt::format("cannot listen on {}: {}", o.address, why));
  }
  std::vector<int> fds(static_cast<std::size_t>(o.world_size - 1), -1);
  auto cleanup = [&] {
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
    ::close(listener);
    if (a.family == AF_UNIX) ::unlink(a.unix_path.c_str());
  };
  int connected = 0;
  while (connected < o.world_size - 1) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      std::vector<int> missing;
      for (std::size_t i = 0; i < fds.size(); ++i)
        if (fds[i] < 0) missing.push_back(static_cast<int>(i) + 1);
      cleanup();
      throw setup_error(o, fmt::format("waited {} s on {} for rank(s) {} to connect", o.connect_timeout.count() / 1000.0,
                                       o.address, fmt::format("{}", fmt::join(missing, ", "))));
    }
    pollfd pfd{listener, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000))) <= 0) continue;
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    Header hello;
    if (!io_before(fd, &hello, sizeof hello, true, deadline) || hello.magic != kMagic || hello.kind != Kind::hello) {
      ::close(fd);  // not one of ours (a port scanner, a stale client)
      continue;
    }
    std::string refused;
    if (hello.row_bytes != static_cast<std::uint64_t>(o.world_size))
      refused = fmt::format("rank {} has WORLD_SIZE {}, rank 0 has {}", hello.rank, hello.row_bytes, o.world_size);
    else if (hello.rank < 1 || hello.rank >= o.world_size)
      refused = fmt::format("a rank {} connected; expected 1 .. {}", hello.rank, o.world_size - 1);
    else if (fds[static_cast<std::size_t>(hello.rank - 1)] >= 0)
      refused = fmt::format("two processes connected as rank {}", hello.rank);
    if (!refused.empty()) {
      ::close(fd);
      cleanup();
      throw setup_error(o, refused);
    }
    tune(fd, a.family);
    fds[static_cast<std::size_t>(hello.rank - 1)] = fd;
    ++connected;
  }
  // Everyone is here: tell them, so no rank starts before the world is whole.
  for (int fd : fds) {
    Header ack{.kind = Kind::hello, .row_bytes = static_cast<std::uint64_t>(o.world_size), .rank = 0};
    if (!io_before(fd, &ack, sizeof ack, false, deadline)) {
      cleanup();
      throw setup_error(o, "a rank left during the handshake");
    }
  }
  ::close(listener);
  if (a.family == AF_UNIX) ::unlink(a.unix_path.c_str());
  return fds;
}

int join(const SocketWorldOptions& o, const Address& a) {
  const auto deadline = Clock::now() + o.connect_timeout;
  std::string last = "no attempt";
  for (;;) {
    if (Clock::now() >= deadline)
      throw setup_error(o, fmt::format("waited {} s for rank 0 at {} ({})", o.connect_timeout.count() / 1000.0,
                                       o.address, last));
    const int fd = ::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw setup_error(o, fmt::format("socket: {}", std::strerror(errno)));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a.storage), a.length) != 0) {
      last = std::strerror(errno);
      ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // rank 0 is not listening yet
      continue;
    }
    tune(fd, a.family);
    Header hello{.kind = Kind::hello, .row_bytes = static_cast<std::uint64_t>(o.world_size), .rank = o.rank};
    Header ack;
    if (!io_before(fd, &hello, sizeof hello, false, deadline) || !io_before(fd, &ack, sizeof ack, true, deadline) ||
        ack.magic != kMagic || ack.kind != Kind::hello) {
      ::close(fd);
      throw setup_error(o, fmt::format("rank 0 at {} refused this rank or left during the handshake (see rank 0's "
                                       "message)",
                                       o.address));
    }
    return fd;
  }
}

int env_int(const char* name, bool required, int fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) {
    if (required) throw Error(fmt::format("communicator: expected environment variable {}, found none", name));
    return fallback;
  }
  int value = 0;
  const std::string_view s(text);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size())
    throw Error(fmt::format("communicator: {}: expected an integer, found '{}'", name, text));
  return value;
}

}  // namespace

std::unique_ptr<Communicator> connect_socket_world(const SocketWorldOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
    throw Error(fmt::format("communicator: expected 0 <= rank < world_size, found rank {} of {}", options.rank,
                            options.world_size));
  if (options.world_size == 1) return std::make_unique<SocketCommunicator>(options, std::vector<int>{});
  const Address address = resolve(options);
  std::vector<int> fds = options.rank == 0 ? serve(options, address) : std::vector<int>{join(options, address)};
  return std::make_unique<SocketCommunicator>(options, std::move(fds));
}

bool multi_rank_environment() { return env_int("WORLD_SIZE", false, 1) > 1; }

SocketWorldOptions socket_world_options_from_env() {
  SocketWorldOptions o;
  o.world_size = env_int("WORLD_SIZE", true, 1);
  o.rank = env_int("RANK", true, 0);
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size)
    throw Error(fmt::format("communicator: expected 0 <= RANK < WORLD_SIZE, found RANK {} and WORLD_SIZE {}", o.rank,
                            o.world_size));
  const int timeout = env_int("MOEJIT_COMM_TIMEOUT", false, 600);
  if (timeout < 1) throw Error(fmt::format("communicator: MOEJIT_COMM_TIMEOUT: expected seconds >= 1, found {}", timeout));
  o.timeout = std::chrono::seconds(timeout);
  o.connect_timeout = std::chrono::seconds(std::max(timeout, 120));
  if (o.world_size == 1) return o;
  const char* rendezvous = std::getenv("MOEJIT_RENDEZVOUS");
  if (rendezvous && *rendezvous) {
    o.address = rendezvous;
    return o;
  }
  const char* host = std::getenv("MASTER_ADDR");
  const char* port = std::getenv("MASTER_PORT");
  if (!host || !*host || !port || !*port)
    throw Error("communicator: expected MOEJIT_RENDEZVOUS (unix:PATH) or MASTER_ADDR and MASTER_PORT (as torchrun "
                "sets them) for a run of several ranks, found neither");
  o.address = fmt::format("tcp:{}:{}", host, port);
  return o;
}

}  // namespace moejit
