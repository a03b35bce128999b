#pragma once
// A small `BasicExpected<T, E>`, used through the alias `npme::Expected<T>`: a value or an error, for functions whose callers
// routinely handle failure. Modelled on tl::expected / C++23 std::expected,
// reduced to what npme uses (GCC 12 with Clang 14 tools has no <expected>).

#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

namespace npme::util {

template <class E> struct Unexpected {
  E error;
};

template <class E> Unexpected<std::decay_t<E>> unexpected(E&& e) {
  return {std::forward<E>(e)};
}

template <class T, class E> class BasicExpected {
public:
  BasicExpected() requires std::is_default_constructible_v<T> : m_v(std::in_place_index<0>) {}
  BasicExpected(const T& v) : m_v(std::in_place_index<0>, v) {}
  BasicExpected(T&& v) : m_v(std::in_place_index<0>, std::move(v)) {}
  template <class U>
    requires(std::is_constructible_v<T, U &&> && !std::is_same_v<std::decay_t<U>, T> &&
             !std::is_same_v<std::decay_t<U>, BasicExpected> &&
             !std::is_same_v<std::decay_t<U>, Unexpected<E>>)
  BasicExpected(U&& v) : m_v(std::in_place_index<0>, std::forward<U>(v)) {}
  template <class G> BasicExpected(Unexpected<G> u) : m_v(std::in_place_index<1>, std::move(u.error)) {}

  bool has_value() const { return m_v.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(m_v); }
  const T& value() const& { return std::get<0>(m_v); }
  T value() && { return std::get<0>(std::move(m_v)); } // by value: safe on temporaries
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  E& error() & { return std::get<1>(m_v); }
  const E& error() const& { return std::get<1>(m_v); }
  E&& error() && { return std::get<1>(std::move(m_v)); }

  template <class U> T value_or(U&& fallback) const& {
    return has_value() ? value() : static_cast<T>(std::forward<U>(fallback));
  }

private:
  std::variant<T, E> m_v;
};

template <class E> class BasicExpected<void, E> {
public:
  BasicExpected() = default;
  template <class G> BasicExpected(Unexpected<G> u) : m_error(std::move(u.error)) {}

  bool has_value() const { return !m_error.has_value(); }
  explicit operator bool() const { return has_value(); }
  void value() const {}

  E& error() & { return *m_error; }
  const E& error() const& { return *m_error; }
  E&& error() && { return std::move(*m_error); }

private:
  std::optional<E> m_error;
};

} // namespace npme::util
