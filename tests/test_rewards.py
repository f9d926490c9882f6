import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from mvalign.data.pairs import PreferencePair
from mvalign.rewards import CallableReward, RewardError, ScoreCache
from mvalign.rewards.bt_head import BTHeadReward, SentenceEncoder, train_bt_head
from mvalign.rewards.hf import HFRewardModel

GOOD = ["Here is a clear, step-by-step answer: {t} works like this, and here is an example.",
        "Happy to help! The short version about {t}: it is simple once you see the main idea.",
        "Great question. {t} can be explained in three points, which I list below."]
BAD = ["No.", "Whatever, figure out {t} yourself.", "I don't care about {t}."]
TOPICS = ["tea", "rain", "bikes", "maps", "clay", "knots", "stars", "bread", "chess", "kites", "owls", "glass",
          "tides", "salt", "moss", "jazz", "dust", "wool", "ink", "soap"]


def toy_pairs(topics):
    return [PreferencePair(f"Tell me about {t}.", GOOD[i % 3].format(t=t), BAD[(i + 1) % 3].format(t=t))
            for i, t in enumerate(topics)]


def test_bt_head_beats_chance_on_separable_set(tmp_path):
    meta = train_bt_head(toy_pairs(TOPICS[:14]), toy_pairs(TOPICS[14:]), tmp_path / "head", value="helpful", epochs=20)
    assert meta["val_accuracy"] >= 0.9 and meta["val_pairs"] == 6
    saved = json.loads((tmp_path / "head" / "head.json").read_text())
    assert saved["val_accuracy"] == meta["val_accuracy"]
    rm = BTHeadReward(tmp_path / "head")
    s = rm.score(["Tell me about owls."] * 2, [GOOD[0].format(t="owls"), BAD[1].format(t="owls")])
    assert s[0] > s[1]
    cost = BTHeadReward(tmp_path / "head", cost=True)
    assert cost.score(["q"], ["a"])[0] == pytest.approx(-rm.score(["q"], ["a"])[0])
    assert cost.identity != rm.identity


def test_encoder_embeddings_are_normalised_and_deterministic():
    enc = SentenceEncoder.get()
    e = enc.embed(["hello world", "a different sentence", "hello world"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e[0], e[2]) and not np.allclose(e[0], e[1])


def test_score_cache_serves_stored_scores(tmp_path):
    calls = []

    def scorer(prompt, response):
        calls.append(response)
        return float(len(response))

    rm = CallableReward(scorer, "len")
    cache = ScoreCache(tmp_path / "scores.sqlite")
    first = cache.score(rm, ["p", "p"], ["ab", "abc"])
    assert first.tolist() == [2.0, 3.0] and len(calls) == 2
    second = ScoreCache(tmp_path / "scores.sqlite").score(rm, ["p", "p", "p"], ["abc", "abcd", "ab"])
    assert second.tolist() == [3.0, 4.0, 2.0] and calls == ["ab", "abc", "abcd"]


def test_non_finite_reward_is_an_error():
    rm = CallableReward(lambda p, r: float("nan") if r == "bad" else 1.0, "flaky")
    with pytest.raises(RewardError, match="non-finite score"):
        rm.score(["p", "q"], ["ok", "bad"])


def test_hf_sequence_classifier_reward(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    rm = HFRewardModel(str(tmp_path / "rm"), "helpful", batch_size=2)
    scores = rm.score(["Hi", "Hello there", "Yo"], ["Hello!", "General Kenobi.", "Hey"])
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"},
                                          {"role": "assistant", "content": "General Kenobi."}], tokenize=False)
    with torch.no_grad():
        direct = model(**tokenizer([text], return_tensors="pt")).logits[0, 0].item()
    assert scores[1] == pytest.approx(direct, abs=1e-5)  # padding in the batch does not change the score
    negated = HFRewardModel(str(tmp_path / "rm"), "harm", cost=True).score(["Hello there"], ["General Kenobi."])
    assert negated[0] == pytest.approx(-direct, abs=1e-5)


def test_long_prompts_never_hide_the_response():
    import numpy as np

    from mvalign.rewards.bt_head import SentenceEncoder, embed_responses

    enc = SentenceEncoder.get()
    prompt = "Tell me about the history of bridges. " * 120 + "Now, the final question: what is your name?"
    good, bad = "My name is Ada, happy to help.", "Go away, I will not answer that."
    e = embed_responses(enc, [prompt, prompt], [good, bad])
    assert not np.allclose(e[0], e[1], atol=1e-4)  # the responses survive the 256-token cut
    legacy = embed_responses(enc, [prompt, prompt], [good, bad], "legacy")
    assert np.allclose(legacy[0], legacy[1], atol=1e-6)  # the old format lost them: why it was replaced
    short = embed_responses(enc, ["Hi?"], [good])[0]
    tail = embed_responses(enc, ["Now, the final question: what is your name?"], [good])[0]
    assert float(short @ e[0]) < float(tail @ e[0])  # what remains of the prompt is its end (the last turn)
