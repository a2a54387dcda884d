#include <moe/routing.hpp>

#include <gtest/gtest.h>

namespace MOE_TEST_FILE_ID {

TEST(RoutingPlan, ResetSizesEverythingAndEmptiesTheSlots) {
  moe::RoutingPlan<float> plan;
  plan.reset(5, 2, 4);
  EXPECT_EQ(plan.num_tokens(), 5);
  EXPECT_EQ(plan.slots_per_token(), 2);
  EXPECT_EQ(plan.num_experts, 4);
  EXPECT_EQ(plan.logits.rows(), 5);
  EXPECT_EQ(plan.scores.cols(), 4);
  EXPECT_TRUE((plan.expert.array() == moe::kEmptySlot).all());
  EXPECT_TRUE((plan.dropped.array() == 0).all());
  EXPECT_FALSE(plan.active(0, 0));
}

TEST(RoutingPlan, ActiveMeansAssignedAndNotDropped) {
  moe::RoutingPlan<double> plan;
  plan.reset(1, 3, 4);
  plan.expert(0, 0) = 2;
  plan.expert(0, 1) = 3;
  plan.dropped(0, 1) = 1;
  EXPECT_TRUE(plan.active(0, 0));
  EXPECT_FALSE(plan.active(0, 1));  // dropped by capacity
  EXPECT_FALSE(plan.active(0, 2));  // empty
}

TEST(RoutingPlan, ZeroTokens) {
  moe::RoutingPlan<float> plan;
  plan.reset(0, 2, 8);
  EXPECT_EQ(plan.num_tokens(), 0);
  EXPECT_EQ(plan.logits.size(), 0);
}

}  // namespace
