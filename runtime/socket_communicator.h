// A Communicator between the processes of one run, over sockets: what the
// ranks of `gpt_moe train --nproc N` use on the CPU backend for the comm ops
// and, on every backend, for the host-side collectives of the training loop
// (gathering the experts for a checkpoint, agreeing to stop). NCCL stays the
// data plane of the CUDA backend; this is the control plane, and the data
// plane where there is no GPU.
//
// Topology: a star. Rank 0 is the hub: it listens, every other rank connects
// to it, and each collective is every rank sending its part to the hub, the
// hub computing every rank's result (sums in rank order, so all ranks get the
// same bits) and sending it back. Simple and fast enough for a control plane
// and for CPU-sized models; not meant for GPU-sized tensors.
//
// Where the hub is (the rendezvous), like torchrun's environment:
//   MOEJIT_RENDEZVOUS=unix:/path      a Unix-domain socket (what the local
//                                     launcher sets: a fresh temporary dir)
//   MASTER_ADDR + MASTER_PORT          TCP (across hosts: srun, mpirun)
//   MOEJIT_COMM_TIMEOUT=seconds        how long one wait may last (default 600:
//                                     a peer may be writing a checkpoint)
//
// Failure: a peer that dies closes its socket, and the next wait on it ends
// at once with an Error naming this rank, the peer and the collective ("rank
// 0: communicator: rank 1 closed its connection during all_reduce #12 (it
// exited or was killed)"); a peer that stops answering ends the wait after
// the timeout; a rank that makes another collective than the hub's is
// refused by name. No wait is unbounded, so no rank hangs.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "runtime/communicator.h"

namespace moejit {

struct SocketWorldOptions {
  int rank = 0;
  int world_size = 1;
  // "unix:/path/to/socket" or "tcp:host:port".
  std::string address;
  // How long the ranks may take to connect (rank 0 may start late).
  std::chrono::milliseconds connect_timeout{120000};
  // How long one wait for a peer may last.
  std::chrono::milliseconds timeout{600000};
};

// Connects this rank to the others (collective: every rank calls it). Throws
// moejit::Error naming the rank and what failed (bad options, no hub within
// connect_timeout, a duplicate rank, a peer of another world size).
std::unique_ptr<Communicator> connect_socket_world(const SocketWorldOptions& options);

// The options from the environment: RANK and WORLD_SIZE (required; LOCAL_RANK
// is not needed here), MOEJIT_RENDEZVOUS or MASTER_ADDR/MASTER_PORT,
// MOEJIT_COMM_TIMEOUT. Throws moejit::Error naming the variable that is
// missing or malformed. world_size 1 needs no address.
SocketWorldOptions socket_world_options_from_env();

// Whether the environment describes a run of several ranks (WORLD_SIZE > 1).
bool multi_rank_environment();

}  // namespace moejit
