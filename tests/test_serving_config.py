

def test_the_run_report_says_whether_serving_reranks_with_the_policy_and_why():
    from recflow.serving_config import ServingConfig, policy_layer_summary

    assert ServingConfig().policy_rerank is False  # the reason below is the default's
    off = policy_layer_summary(ServingConfig())
    assert "policy_rerank=false; the default is off because" in off and "policy_lift.py" in off
    on = policy_layer_summary(ServingConfig(policy_rerank=True))
    assert "re-ranks the pushed bundle's slates (serving.policy_rerank=true; the default is off" in on
