# The app's entry module. The device imports it from the signed image and
# calls main(); a return or an exception is logged by the guard.
import greet


def main():
    print(greet.message())
    print("sum of squares below 1000:", greet.sum_squares(1000))
