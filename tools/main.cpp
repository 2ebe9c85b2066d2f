// The moejit command-line tool (placeholder until `moejit opt` lands).
#include <cstdio>
int main() {
  std::fputs("moejit: no command yet\n", stderr);
  return 2;
}
