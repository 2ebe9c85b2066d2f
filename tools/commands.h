// The subcommands of the `moejit` tool. Each lives in its own file with one
// registration function that adds a CLI11 subcommand to the app; when that
// subcommand is chosen, its callback stores what to run into `selected`.
// main.cpp runs it after parsing, turning moejit::Error into exit code 1.
//
// To add a command (`moejit train`, ...): write tools/train.cpp with
// `void register_train_command(CLI::App&, Command&)`, declare it here and call
// it from main.cpp.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace moejit::cli {

// Runs the chosen command; returns its exit code.
using Command = std::function<int()>;

void register_opt_command(CLI::App& app, Command& selected);
void register_ops_command(CLI::App& app, Command& selected);
void register_passes_command(CLI::App& app, Command& selected);
void register_tune_command(CLI::App& app, Command& selected);

// Helpers shared by commands: read a file ("-" is stdin), and write a file
// through a temporary name and a rename ("-" is stdout). Both throw
// moejit::Error naming the path.
std::string read_input(const std::string& path);
void write_output(const std::string& path, const std::string& text);

}  // namespace moejit::cli
