# The app's entry module. The boot guard verifies the signed image, mounts it
# and calls main(). A new release runs on trial until it calls confirm().
import greet

try:
    from mpseal_guard import confirm
except ImportError:  # running without the guard, e.g. straight from the source tree
    def confirm():
        return False


def main():
    print(greet.message())
    print("sum of squares below 1000:", greet.sum_squares(1000))
    # Confirm only after the app's own health check: a release that never gets
    # here is rolled back to the last committed one.
    confirm()
