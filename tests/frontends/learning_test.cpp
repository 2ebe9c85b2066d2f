// Learning: a tiny GPT-MoE trained for a few hundred steps on tiny
// Shakespeare must get its validation loss well below the unigram entropy of
// the text (what a model that ignores context can reach), so it has learned
// to use context. The entropy is computed here from character counts.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <map>

#include "frontends/corpus.h"
#include "frontends/gpt_moe.h"
#include "frontends/tokenizer.h"
#include "frontends/trainer.h"
#include "runtime/backend.h"

using namespace moejit;

TEST_CASE("a tiny GPT-MoE learns tiny Shakespeare below the unigram entropy", "[learning]") {
  const std::string text = read_text_file(std::string(MOEJIT_DATA_DIR) + "/tinyshakespeare.txt");
  // Unigram entropy in nats, from character counts over the validation part.
  const std::size_t split = text.size() * 9 / 10;
  std::map<char, double> counts;
  for (std::size_t i = split; i < text.size(); ++i) counts[text[i]] += 1;
  double entropy = 0;
  const double n = static_cast<double>(text.size() - split);
  for (const auto& [ch, count] : counts) entropy -= count / n * std::log(count / n);

  CharTokenizer tokenizer = CharTokenizer::from_text(text);
  const std::vector<std::int32_t> tokens = tokenizer.encode(text);
  const std::vector<std::int32_t> train(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(split));
  const std::vector<std::int32_t> val(tokens.begin() + static_cast<std::ptrdiff_t>(split), tokens.end());

  GptMoeConfig c;
  c.vocab_size = tokenizer.vocab_size();
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 32;
  c.block_size = 32;
  c.batch_size = 8;
  c.num_experts = 4;
  c.top_k = 2;
  c.d_expert = 64;
  c.learning_rate = 4e-3;
  c.min_lr = 4e-4;
  c.warmup_iters = 20;
  c.max_iters = 300;
  c.weight_decay = 0.0;
  c.seed = 7;

  auto backend = make_cpu_backend();
  const auto start = std::chrono::steady_clock::now();
  GptMoeTrainer trainer(c, *backend, init_parameters(gpt_moe_param_specs(c), 7));
  BatchSampler batches(train, c.batch_size, c.block_size, 7);
  BatchSampler val_batches(val, c.batch_size, c.block_size, 8);
  const double initial = trainer.estimate_loss(val_batches, 8);
  for (std::int64_t iter = 0; iter < c.max_iters; ++iter) trainer.step(batches.next(), iter);
  const double final_val = trainer.estimate_loss(val_batches, 20);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  WARN("unigram entropy " << entropy << " nats; val loss " << initial << " -> " << final_val << " after "
                          << c.max_iters << " steps in " << seconds << " s");
  CHECK(initial > entropy);  // an untrained model is worse than unigram statistics
  CHECK(final_val < entropy - 0.3);
}
