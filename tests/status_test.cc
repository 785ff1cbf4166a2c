#include "rocket/status.h"

#include <gtest/gtest.h>

namespace rocket {
namespace {

Result<int> half(int x) {
  if (x % 2 != 0) return invalid_argument("odd");
  return x / 2;
}

Status quarter(int x, int* out) {
  ROCKET_ASSIGN_OR_RETURN(int h, half(x));
  ROCKET_ASSIGN_OR_RETURN(*out, half(h));
  return ok_status();
}

TEST(Status, CarriesCodeAndMessage) {
  Status s = resource_exhausted("pool full");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.to_string(), "RESOURCE_EXHAUSTED: pool full");
  EXPECT_EQ(ok_status().to_string(), "OK");
}

TEST(Status, MacrosPropagateErrors) {
  int out = 0;
  EXPECT_TRUE(quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  EXPECT_EQ(quarter(6, &out).code(), StatusCode::kInvalidArgument);
}

TEST(Status, ErrnoMapsToRetryableCodes) {
  EXPECT_EQ(errno_status("x", ENOMEM).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(errno_status("x", ECONNREFUSED).code(), StatusCode::kUnavailable);
  EXPECT_EQ(errno_status("x", EACCES).code(), StatusCode::kPermissionDenied);
}

TEST(Status, ValueOfAnErrorAborts) {
  Result<int> r = not_found("nope");
  EXPECT_DEATH((void)r.value(), "nope");
}

}  // namespace
}  // namespace rocket
