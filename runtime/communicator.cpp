// The per-thread communicator (communicator.h).
#include "runtime/communicator.h"

namespace moejit {

namespace {
thread_local Communicator* installed = nullptr;
}  // namespace

Communicator* thread_communicator() { return installed; }

ScopedCommunicator::ScopedCommunicator(Communicator* communicator) : previous_(installed) { installed = communicator; }

ScopedCommunicator::~ScopedCommunicator() { installed = previous_; }

}  // namespace moejit
