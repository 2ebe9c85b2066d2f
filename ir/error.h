// Errors: what a user can get wrong is a moejit::Error carrying a message that
// says what was expected and what was found; a library bug is MOEJIT_ASSERT.
#pragma once
#include <stdexcept>
#include <string>

namespace moejit {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace moejit

#define MOEJIT_ASSERT(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) ::moejit::assert_fail(#cond, __FILE__, __LINE__, std::string{__VA_ARGS__}); \
  } while (0)
