#include "modelcast/text/chat_template.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <variant>

#include "utf8.h"

namespace modelcast::text {
namespace {

using ojson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Values, with Python's semantics where jinja2 has them.
struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python's dicts
using Function = std::function<Result<Value>(std::vector<Value>& args, std::vector<std::pair<std::string, Value>>& kw)>;

struct Value {
  enum Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kFunction } kind = kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // a dict, or a namespace's attributes
  std::shared_ptr<Function> fn;

  static Value None() { return Value{kNone}; }
  static Value Bool(bool v) { Value x{kBool}; x.b = v; return x; }
  static Value Int(int64_t v) { Value x{kInt}; x.i = v; return x; }
  static Value Float(double v) { Value x{kFloat}; x.f = v; return x; }
  static Value Str(std::string v) { Value x{kString}; x.s = std::move(v); return x; }
  static Value MakeList(List v = {}) { Value x{kList}; x.list = std::make_shared<List>(std::move(v)); return x; }
  static Value MakeDict(Dict v = {}) { Value x{kDict}; x.dict = std::make_shared<Dict>(std::move(v)); return x; }
  static Value Fn(Function f) { Value x{kFunction}; x.fn = std::make_shared<Function>(std::move(f)); return x; }
  bool IsNumber() const { return kind == kInt || kind == kFloat || kind == kBool; }
  double Num() const { return kind == kFloat ? f : kind == kInt ? static_cast<double>(i) : b ? 1.0 : 0.0; }
  const Value* Find(const std::string& key) const {
    if (!dict) return nullptr;
    for (const auto& [k, v] : *dict) {
      if (k == key) return &v;
    }
    return nullptr;
  }
};

Value FromJson(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null: return Value::None();
    case ojson::value_t::boolean: return Value::Bool(j.get<bool>());
    case ojson::value_t::number_integer: return Value::Int(j.get<int64_t>());
    case ojson::value_t::number_unsigned: return Value::Int(static_cast<int64_t>(j.get<uint64_t>()));
    case ojson::value_t::number_float: return Value::Float(j.get<double>());
    case ojson::value_t::string: return Value::Str(j.get<std::string>());
    case ojson::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(FromJson(e));
      return Value::MakeList(std::move(l));
    }
    case ojson::value_t::object: {
      Dict d;
      for (const auto& [k, v] : j.items()) d.emplace_back(k, FromJson(v));
      return Value::MakeDict(std::move(d));
    }
    default: return Value::None();
  }
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: case Value::kNone: return false;
    case Value::kBool: return v.b;
    case Value::kInt: return v.i != 0;
    case Value::kFloat: return v.f != 0;
    case Value::kString: return !v.s.empty();
    case Value::kList: return !v.list->empty();
    case Value::kDict: return !v.dict->empty();
    default: return true;
  }
}

// Python's repr of a float: the shortest text that reads back the same.
std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof(buf), "%.*g", p, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  const auto e = s.find('e');
  if (e != std::string::npos) {  // 1e+16, 1e-05 as Python writes them
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    const char sign = exp[0] == '-' ? '-' : '+';
    if (exp[0] == '-' || exp[0] == '+') exp = exp.substr(1);
    while (exp.size() > 2 && exp[0] == '0') exp = exp.substr(1);
    if (exp.size() < 2) exp = "0" + exp;
    return mant + "e" + sign + exp;
  }
  if (s.find('.') == std::string::npos) s += ".0";
  return s;
}

std::string Repr(const Value& v);

std::string StrRepr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == q) out += std::string("\\") + static_cast<char>(q);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else out.push_back(static_cast<char>(c));
  }
  return out + q;
}

// str(v) as Python prints it, which is what {{ v }} writes.
std::string Str(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "";
    case Value::kNone: return "None";
    case Value::kBool: return v.b ? "True" : "False";
    case Value::kInt: return std::to_string(v.i);
    case Value::kFloat: return FloatRepr(v.f);
    case Value::kString: return v.s;
    case Value::kNamespace: return "<Namespace>";
    case Value::kFunction: return "<function>";
    default: return Repr(v);
  }
}

std::string Repr(const Value& v) {
  if (v.kind == Value::kString) return StrRepr(v.s);
  if (v.kind == Value::kList) {
    std::string out = "[";
    for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + Repr((*v.list)[k]);
    return out + "]";
  }
  if (v.kind == Value::kDict) {
    std::string out = "{";
    for (size_t k = 0; k < v.dict->size(); ++k) {
      out += (k ? ", " : "") + StrRepr((*v.dict)[k].first) + ": " + Repr((*v.dict)[k].second);
    }
    return out + "}";
  }
  return Str(v);
}

// json.dumps(x, ensure_ascii=False, indent=indent, separators=..., sort_keys=...), as
// transformers' tojson filter calls it.
Status ToJson(const Value& v, int indent, int depth, bool sort_keys, std::string* out) {
  auto newline = [&](int d) {
    if (indent >= 0) *out += "\n" + std::string(static_cast<size_t>(indent * d), ' ');
  };
  const std::string item_sep = indent >= 0 ? "," : ", ";
  switch (v.kind) {
    case Value::kNone: case Value::kUndefined: *out += "null"; return Status::Ok();
    case Value::kBool: *out += v.b ? "true" : "false"; return Status::Ok();
    case Value::kInt: *out += std::to_string(v.i); return Status::Ok();
    case Value::kFloat:
      *out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity") : FloatRepr(v.f);
      return Status::Ok();
    case Value::kString: {
      *out += '"';
      for (unsigned char c : v.s) {
        switch (c) {
          case '"': *out += "\\\""; break;
          case '\\': *out += "\\\\"; break;
          case '\n': *out += "\\n"; break;
          case '\r': *out += "\\r"; break;
          case '\t': *out += "\\t"; break;
          case '\b': *out += "\\b"; break;
          case '\f': *out += "\\f"; break;
          default:
            if (c < 0x20 || c == 0x7f) {
              char buf[8];
              std::snprintf(buf, sizeof(buf), "\\u%04x", c);
              *out += buf;
            } else {
              out->push_back(static_cast<char>(c));
            }
        }
      }
      *out += '"';
      return Status::Ok();
    }
    case Value::kList: {
      if (v.list->empty()) return *out += "[]", Status::Ok();
      *out += "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) *out += item_sep;
        newline(depth + 1);
        MC_RETURN_IF_ERROR(ToJson((*v.list)[k], indent, depth + 1, sort_keys, out));
      }
      newline(depth);
      *out += "]";
      return Status::Ok();
    }
    case Value::kDict: {
      if (v.dict->empty()) return *out += "{}", Status::Ok();
      Dict d = *v.dict;
      if (sort_keys) std::stable_sort(d.begin(), d.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      *out += "{";
      for (size_t k = 0; k < d.size(); ++k) {
        if (k) *out += item_sep;
        newline(depth + 1);
        MC_RETURN_IF_ERROR(ToJson(Value::Str(d[k].first), indent, depth + 1, sort_keys, out));
        *out += ": ";
        MC_RETURN_IF_ERROR(ToJson(d[k].second, indent, depth + 1, sort_keys, out));
      }
      newline(depth);
      *out += "}";
      return Status::Ok();
    }
    default:
      return InvalidArgument("tojson: a value of this kind is not JSON serializable");
  }
}

bool Equal(const Value& a, const Value& b) {
  if (a.IsNumber() && b.IsNumber()) return a.Num() == b.Num();
  if (a.kind != b.kind) return (a.kind == Value::kUndefined || a.kind == Value::kNone) && a.kind == b.kind;
  switch (a.kind) {
    case Value::kString: return a.s == b.s;
    case Value::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k) {
        if (!Equal((*a.list)[k], (*b.list)[k])) return false;
      }
      return true;
    case Value::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.Find(k);
        if (o == nullptr || !Equal(v, *o)) return false;
      }
      return true;
    case Value::kNamespace: case Value::kFunction: return a.dict == b.dict && a.fn == b.fn;
    default: return true;
  }
}

// Code points of a UTF-8 string (Python indexes strings by them).
std::vector<std::string> Chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = std::min(Utf8Length(static_cast<unsigned char>(s[i])), s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

bool IsSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string Strip(const std::string& s, const std::optional<std::string>& chars, bool left, bool right) {
  auto strip_this = [&](char c) {
    return chars ? chars->find(c) != std::string::npos : IsSpace(static_cast<unsigned char>(c));
  };
  size_t b = 0, e = s.size();
  if (left) while (b < e && strip_this(s[b])) ++b;
  if (right) while (e > b && strip_this(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// ---------------------------------------------------------------------------------------------
// Expressions.
struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Expr {
  enum Kind { kLiteral, kName, kList, kTuple, kDict, kAttr, kItem, kSlice, kCall, kFilter, kTest, kUnary, kBinary, kCond };
  Kind kind;
  int line = 0;
  Value value;                 // literal
  std::string name;            // name, attribute, filter, test, operator
  std::vector<ExprPtr> args;   // operands, items, call arguments
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negate = false;         // `is not`
};

struct Token {
  enum Kind { kName, kInt, kFloat, kString, kOp, kEnd } kind;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

Result<std::vector<Token>> Lex(const std::string& s, int line, const std::string& where) {
  std::vector<Token> out;
  size_t i = 0;
  auto error = [&](const std::string& what) {
    return InvalidArgument(where + ", line " + std::to_string(line) + ": " + what);
  };
  while (i < s.size()) {
    const char c = s[i];
    if (IsSpace(static_cast<unsigned char>(c))) {
      if (c == '\n') ++line;
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::kName, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      std::string text = s.substr(i, j - i);
      text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
      Token t{is_float ? Token::kFloat : Token::kInt, text};
      if (is_float) t.f = std::strtod(text.c_str(), nullptr); else t.i = std::stoll(text);
      out.push_back(t);
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          switch (e) {
            case 'n': v += '\n'; break;
            case 't': v += '\t'; break;
            case 'r': v += '\r'; break;
            case '\\': v += '\\'; break;
            case '\'': v += '\''; break;
            case '"': v += '"'; break;
            case 'u': case 'x': {
              const size_t n = e == 'u' ? 4 : 2;
              if (j + n >= s.size()) return error("a string ends inside an escape");
              AppendUtf8(static_cast<uint32_t>(std::stoul(s.substr(j + 1, n), nullptr, 16)), &v);
              j += n;
              break;
            }
            default: v += '\\'; v += e;
          }
        } else {
          if (s[j] == '\n') ++line;
          v += s[j];
        }
      }
      if (j >= s.size()) return error("a string is not closed");
      out.push_back({Token::kString, v});
      i = j + 1;
    } else {
      static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(",
                                  ")", "[", "]", "{", "}", ",", ".", ":", "|", "="};
      bool found = false;
      for (const char* op : ops) {
        const size_t n = std::strlen(op);
        if (s.compare(i, n, op) == 0) {
          out.push_back({Token::kOp, op});
          i += n;
          found = true;
          break;
        }
      }
      if (!found) return error(std::string("unexpected character '") + c + "'");
    }
  }
  out.push_back({Token::kEnd, ""});
  return out;
}

class ExprParser {
 public:
  ExprParser(std::vector<Token> t, int line, std::string where) : t_(std::move(t)), line_(line), where_(std::move(where)) {}
  Result<ExprPtr> Parse() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Expression());
    if (Peek().kind != Token::kEnd) return Error("unexpected '" + Peek().text + "'");
    return e;
  }
  // For statements: the tokens left after the parsed part.
  const Token& Peek(size_t k = 0) const { return t_[std::min(pos_ + k, t_.size() - 1)]; }
  bool IsName(const char* n, size_t k = 0) const { return Peek(k).kind == Token::kName && Peek(k).text == n; }
  bool IsOp(const char* o) const { return Peek().kind == Token::kOp && Peek().text == o; }
  Token Next() { return t_[std::min(pos_++, t_.size() - 1)]; }
  Status Expect(const char* op) {
    if (!IsOp(op)) return Error(std::string("expected '") + op + "', found '" + Peek().text + "'");
    ++pos_;
    return Status::Ok();
  }
  Status Error(const std::string& what) const {
    return InvalidArgument(where_ + ", line " + std::to_string(line_) + ": " + what);
  }
  Result<ExprPtr> Expression() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Or());
    if (IsName("if")) {  // a if c else b
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr cond, Or());
      ExprPtr other;
      if (IsName("else")) {
        Next();
        MC_ASSIGN_OR_RETURN(other, Expression());
      } else {
        other = Make(Expr::kLiteral);
      }
      ExprPtr c = Make(Expr::kCond);
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(other));
      return c;
    }
    return e;
  }
  Result<ExprPtr> Primary();
  Result<ExprPtr> Tuple() {  // for targets and `for` iterables: a, b
    MC_ASSIGN_OR_RETURN(ExprPtr e, Expression());
    if (!IsOp(",")) return e;
    ExprPtr t = Make(Expr::kTuple);
    t->args.push_back(std::move(e));
    while (IsOp(",")) {
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr more, Expression());
      t->args.push_back(std::move(more));
    }
    return t;
  }

 private:
  ExprPtr Make(Expr::Kind k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line_;
    return e;
  }
  ExprPtr Binary(const std::string& op, ExprPtr a, ExprPtr b) {
    ExprPtr e = Make(Expr::kBinary);
    e->name = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }
  Result<ExprPtr> Or() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, And());
    while (IsName("or")) {
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr r, And());
      e = Binary("or", std::move(e), std::move(r));
    }
    return e;
  }
  Result<ExprPtr> And() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Not());
    while (IsName("and")) {
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr r, Not());
      e = Binary("and", std::move(e), std::move(r));
    }
    return e;
  }
  Result<ExprPtr> Not() {
    if (IsName("not")) {
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr x, Not());
      ExprPtr e = Make(Expr::kUnary);
      e->name = "not";
      e->args.push_back(std::move(x));
      return e;
    }
    return Compare();
  }
  Result<ExprPtr> Compare() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Math1());
    for (;;) {
      std::string op;
      if (Peek().kind == Token::kOp &&
          (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp(">") || IsOp("<=") || IsOp(">="))) {
        op = Next().text;
      } else if (IsName("in")) {
        Next();
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        Next(), Next();
        op = "not in";
      } else {
        return e;
      }
      MC_ASSIGN_OR_RETURN(ExprPtr r, Math1());
      e = Binary(op, std::move(e), std::move(r));
    }
  }
  Result<ExprPtr> Math1() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Concat());
    while (IsOp("+") || IsOp("-")) {
      const std::string op = Next().text;
      MC_ASSIGN_OR_RETURN(ExprPtr r, Concat());
      e = Binary(op, std::move(e), std::move(r));
    }
    return e;
  }
  Result<ExprPtr> Concat() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Math2());
    while (IsOp("~")) {
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr r, Math2());
      e = Binary("~", std::move(e), std::move(r));
    }
    return e;
  }
  Result<ExprPtr> Math2() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Pow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = Next().text;
      MC_ASSIGN_OR_RETURN(ExprPtr r, Pow());
      e = Binary(op, std::move(e), std::move(r));
    }
    return e;
  }
  Result<ExprPtr> Pow() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Unary(true));
    while (IsOp("**")) {
      Next();
      MC_ASSIGN_OR_RETURN(ExprPtr r, Unary(true));
      e = Binary("**", std::move(e), std::move(r));
    }
    return e;
  }
  Result<ExprPtr> Unary(bool with_filter) {
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      const std::string op = Next().text;
      MC_ASSIGN_OR_RETURN(ExprPtr x, Unary(false));
      e = Make(Expr::kUnary);
      e->name = op;
      e->args.push_back(std::move(x));
    } else {
      MC_ASSIGN_OR_RETURN(e, Postfix());
    }
    if (!with_filter) return e;
    for (;;) {  // filters and tests
      if (IsOp("|")) {
        Next();
        if (Peek().kind != Token::kName) return Error("a filter name must follow '|'");
        ExprPtr f = Make(Expr::kFilter);
        f->name = Next().text;
        while (IsOp(".")) {  // dotted filter names
          Next();
          f->name += "." + Next().text;
        }
        f->args.push_back(std::move(e));
        if (IsOp("(")) MC_RETURN_IF_ERROR(CallArgs(f.get()));
        e = std::move(f);
      } else if (IsName("is")) {
        Next();
        ExprPtr t = Make(Expr::kTest);
        if (IsName("not")) {
          Next();
          t->negate = true;
        }
        if (Peek().kind != Token::kName) return Error("a test name must follow 'is'");
        t->name = Next().text;
        t->args.push_back(std::move(e));
        if (IsOp("(")) {
          MC_RETURN_IF_ERROR(CallArgs(t.get()));
        } else if (Peek().kind == Token::kString || Peek().kind == Token::kInt || Peek().kind == Token::kFloat ||
                   (Peek().kind == Token::kName && !IsName("and") && !IsName("or") && !IsName("else") &&
                    !IsName("if") && !IsName("in") && !IsName("not"))) {
          MC_ASSIGN_OR_RETURN(ExprPtr arg, Primary());  // `is divisibleby 3`, `is sameas none`
          t->args.push_back(std::move(arg));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }
  Result<ExprPtr> Postfix() {
    MC_ASSIGN_OR_RETURN(ExprPtr e, Primary());
    for (;;) {
      if (IsOp(".")) {
        Next();
        if (Peek().kind != Token::kName && Peek().kind != Token::kInt) return Error("an attribute name must follow '.'");
        ExprPtr a = Make(Expr::kAttr);
        a->name = Next().text;
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (IsOp("[")) {
        Next();
        // An item or a slice [a:b:c].
        std::vector<ExprPtr> parts(3);
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!IsOp(":") && !IsOp("]")) {
            MC_ASSIGN_OR_RETURN(parts[k], Expression());
          }
          if (IsOp(":") && k < 2) {
            Next();
            slice = true;
          } else {
            break;
          }
        }
        MC_RETURN_IF_ERROR(Expect("]"));
        ExprPtr x = Make(slice ? Expr::kSlice : Expr::kItem);
        x->args.push_back(std::move(e));
        for (auto& p : parts) x->args.push_back(std::move(p));
        if (!slice && !x->args[1]) return Error("an empty subscript");
        e = std::move(x);
      } else if (IsOp("(")) {
        ExprPtr c = Make(Expr::kCall);
        c->args.push_back(std::move(e));
        MC_RETURN_IF_ERROR(CallArgs(c.get()));
        e = std::move(c);
      } else {
        return e;
      }
    }
  }
  Status CallArgs(Expr* into) {
    MC_RETURN_IF_ERROR(Expect("("));
    while (!IsOp(")")) {
      if (Peek().kind == Token::kName && Peek(1).kind == Token::kOp && Peek(1).text == "=") {
        const std::string key = Next().text;
        Next();
        MC_ASSIGN_OR_RETURN(ExprPtr v, Expression());
        into->kwargs.emplace_back(key, std::move(v));
      } else {
        MC_ASSIGN_OR_RETURN(ExprPtr v, Expression());
        into->args.push_back(std::move(v));
      }
      if (!IsOp(",")) break;
      Next();
    }
    return Expect(")");
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
  int line_;
  std::string where_;
};

Result<ExprPtr> ExprParser::Primary() {
  const Token t = Next();
  ExprPtr e;
  switch (t.kind) {
    case Token::kInt: e = Make(Expr::kLiteral); e->value = Value::Int(t.i); return e;
    case Token::kFloat: e = Make(Expr::kLiteral); e->value = Value::Float(t.f); return e;
    case Token::kString: {
      std::string s = t.text;
      while (Peek().kind == Token::kString) s += Next().text;  // adjacent literals join
      e = Make(Expr::kLiteral);
      e->value = Value::Str(s);
      return e;
    }
    case Token::kName:
      if (t.text == "true" || t.text == "True") { e = Make(Expr::kLiteral); e->value = Value::Bool(true); return e; }
      if (t.text == "false" || t.text == "False") { e = Make(Expr::kLiteral); e->value = Value::Bool(false); return e; }
      if (t.text == "none" || t.text == "None") { e = Make(Expr::kLiteral); e->value = Value::None(); return e; }
      e = Make(Expr::kName);
      e->name = t.text;
      return e;
    case Token::kOp:
      if (t.text == "(") {
        if (IsOp(")")) {
          Next();
          return Make(Expr::kTuple);
        }
        MC_ASSIGN_OR_RETURN(e, Expression());
        if (IsOp(",")) {
          ExprPtr tup = Make(Expr::kTuple);
          tup->args.push_back(std::move(e));
          while (IsOp(",")) {
            Next();
            if (IsOp(")")) break;
            MC_ASSIGN_OR_RETURN(ExprPtr more, Expression());
            tup->args.push_back(std::move(more));
          }
          e = std::move(tup);
        }
        MC_RETURN_IF_ERROR(Expect(")"));
        return e;
      }
      if (t.text == "[") {
        e = Make(Expr::kList);
        while (!IsOp("]")) {
          MC_ASSIGN_OR_RETURN(ExprPtr item, Expression());
          e->args.push_back(std::move(item));
          if (!IsOp(",")) break;
          Next();
        }
        MC_RETURN_IF_ERROR(Expect("]"));
        return e;
      }
      if (t.text == "{") {
        e = Make(Expr::kDict);
        while (!IsOp("}")) {
          MC_ASSIGN_OR_RETURN(ExprPtr k, Expression());
          MC_RETURN_IF_ERROR(Expect(":"));
          MC_ASSIGN_OR_RETURN(ExprPtr v, Expression());
          e->args.push_back(std::move(k));
          e->args.push_back(std::move(v));
          if (!IsOp(",")) break;
          Next();
        }
        MC_RETURN_IF_ERROR(Expect("}"));
        return e;
      }
      return Error("unexpected '" + t.text + "'");
    default:
      return Error("the expression ends too soon");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Statements.
struct ChatTemplate::Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kBlock } kind;
  int line = 0;
  std::string text;                        // text; set/macro name
  std::vector<ExprPtr> exprs;              // output: [expr]; if: conditions; for: [iterable, filter]; set: [target, value]
  std::vector<std::vector<std::unique_ptr<Node>>> bodies;  // if: a body per condition, then else; for: body, else
  std::vector<std::string> names;          // for targets; macro parameters
  std::vector<ExprPtr> defaults;           // macro parameter defaults (null: none)
};

namespace {

using Node = ChatTemplate::Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Segment {
  enum Kind { kText, kOutput, kStatement } kind;
  std::string text;
  int line;
};

// The template cut into text, {{ }} and {% %}, with jinja2's whitespace handling: `-` strips
// the whitespace on its side, trim_blocks drops the newline after a block tag, lstrip_blocks the
// spaces and tabs before one at the start of a line; comments go.
Result<std::vector<Segment>> Segments(const std::string& src, const std::string& where) {
  std::vector<Segment> out;
  size_t i = 0;
  int line = 1;
  bool strip_next = false;  // the previous tag ended with `-`
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
           src[open + 1] != '#') {
      open = src.find('{', open + 1);
    }
    if (open + 1 >= src.size()) open = std::string::npos;
    std::string text = src.substr(i, open == std::string::npos ? std::string::npos : open - i);
    const size_t text_start = i;
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && IsSpace(static_cast<unsigned char>(text[k]))) ++k;
      text.erase(0, k);
    }
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Segment::kText, text, line});
      break;
    }
    const char kind = src[open + 1];
    const bool minus = open + 2 < src.size() && src[open + 2] == '-';
    const bool plus = open + 2 < src.size() && src[open + 2] == '+';
    if (minus) {
      while (!text.empty() && IsSpace(static_cast<unsigned char>(text.back()))) text.pop_back();
    } else if ((kind == '%' || kind == '#') && !plus) {  // lstrip_blocks
      const size_t nl = text.rfind('\n');
      const size_t from = nl == std::string::npos ? 0 : nl + 1;
      const bool line_start = nl != std::string::npos || text_start == 0 || src[text_start - 1] == '\n';
      if (line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.erase(from);
    }
    const int text_line = line;
    line += static_cast<int>(std::count(src.begin() + static_cast<long>(i), src.begin() + static_cast<long>(open), '\n'));
    if (!text.empty()) out.push_back({Segment::kText, text, text_line});
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t body = open + 2 + (minus || plus ? 1 : 0);
    // The block ends at its delimiter outside string literals and brackets, as Jinja's lexer
    // finds it (`{{- "}}" }}` prints "}}"); a comment ends at the first "#}".
    size_t end = std::string::npos;
    if (kind == '#') {
      end = src.find(close, body);
    } else {
      int depth = 0;
      for (size_t k = body; k + 1 < src.size(); ++k) {
        const char ch = src[k];
        if (ch == '\'' || ch == '"') {
          for (++k; k < src.size() && src[k] != ch; ++k) {
            if (src[k] == '\\') ++k;
          }
          continue;
        }
        if (depth == 0 && src.compare(k, 2, close) == 0) {
          end = k;
          break;
        }
        if (ch == '(' || ch == '[' || ch == '{') ++depth;
        if ((ch == ')' || ch == ']' || ch == '}') && depth > 0) --depth;
      }
    }
    if (end == std::string::npos) {
      return InvalidArgument(where + ", line " + std::to_string(line) + ": '" + src.substr(open, 2) + "' is not closed");
    }
    bool end_minus = end > body && src[end - 1] == '-';
    std::string inner = src.substr(body, end - body - (end_minus ? 1 : 0));
    if (kind == '{') out.push_back({Segment::kOutput, inner, line});
    if (kind == '%') out.push_back({Segment::kStatement, inner, line});
    line += static_cast<int>(std::count(src.begin() + static_cast<long>(open), src.begin() + static_cast<long>(end), '\n'));
    i = end + 2;
    strip_next = end_minus;
    if (!end_minus && kind != '{' && i < src.size() && src[i] == '\n') {  // trim_blocks
      ++i;
      ++line;
    }
  }
  return out;
}

class Parser {
 public:
  Parser(std::vector<Segment> segs, std::string where) : s_(std::move(segs)), where_(std::move(where)) {}
  // Parses until one of `ends` (a statement's first word); returns which ended it.
  Result<std::string> ParseBody(Body* body, const std::vector<std::string>& ends) {
    while (pos_ < s_.size()) {
      const Segment& seg = s_[pos_++];
      if (seg.kind == Segment::kText) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kText;
        n->text = seg.text;
        body->push_back(std::move(n));
        continue;
      }
      MC_ASSIGN_OR_RETURN(auto tokens, Lex(seg.text, seg.line, where_));
      ExprParser p(std::move(tokens), seg.line, where_);
      if (seg.kind == Segment::kOutput) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kOutput;
        n->line = seg.line;
        MC_ASSIGN_OR_RETURN(ExprPtr e, p.Parse());
        n->exprs.push_back(std::move(e));
        body->push_back(std::move(n));
        continue;
      }
      if (p.Peek().kind != Token::kName) return p.Error("a statement must start with a name");
      const std::string word = p.Next().text;
      if (std::find(ends.begin(), ends.end(), word) != ends.end()) {
        end_parser_ = std::make_unique<ExprParser>(std::move(p));
        return word;
      }
      MC_RETURN_IF_ERROR(Statement(word, p, seg.line, body));
    }
    if (!ends.empty()) return InvalidArgument(where_ + ": the template ends inside a block (expected '" + ends[0] + "')");
    return std::string();
  }

 private:
  Status Statement(const std::string& word, ExprParser& p, int line, Body* body) {
    auto n = std::make_unique<Node>();
    n->line = line;
    if (word == "if") {
      n->kind = Node::kIf;
      for (std::string ended = "elif";;) {
        MC_ASSIGN_OR_RETURN(ExprPtr cond, ended == "elif" ? p.Parse() : end_parser_->Parse());
        n->exprs.push_back(std::move(cond));
        n->bodies.emplace_back();
        MC_ASSIGN_OR_RETURN(ended, ParseBody(&n->bodies.back(), {"elif", "else", "endif"}));
        if (ended == "elif") {
          ended = "next";
          continue;
        }
        if (ended == "else") {
          n->bodies.emplace_back();
          MC_ASSIGN_OR_RETURN(ended, ParseBody(&n->bodies.back(), {"endif"}));
        }
        break;
      }
    } else if (word == "for") {
      n->kind = Node::kFor;
      for (;;) {
        if (p.Peek().kind != Token::kName) return p.Error("a loop variable must follow 'for'");
        n->names.push_back(p.Next().text);
        if (!p.IsOp(",")) break;
        p.Next();
      }
      if (!p.IsName("in")) return p.Error("expected 'in' in a for loop");
      p.Next();
      MC_ASSIGN_OR_RETURN(ExprPtr iter, p.Expression());
      n->exprs.push_back(std::move(iter));
      if (p.IsName("if")) {
        p.Next();
        MC_ASSIGN_OR_RETURN(ExprPtr cond, p.Expression());
        n->exprs.push_back(std::move(cond));
      }
      if (p.IsName("recursive")) return p.Error("recursive loops are not implemented");
      if (p.Peek().kind != Token::kEnd) return p.Error("unexpected '" + p.Peek().text + "' in a for loop");
      n->bodies.emplace_back();
      MC_ASSIGN_OR_RETURN(std::string ended, ParseBody(&n->bodies.back(), {"else", "endfor"}));
      if (ended == "else") {
        n->bodies.emplace_back();
        MC_ASSIGN_OR_RETURN(ended, ParseBody(&n->bodies.back(), {"endfor"}));
      }
    } else if (word == "set") {
      if (p.Peek().kind != Token::kName) return p.Error("a name must follow 'set'");
      MC_ASSIGN_OR_RETURN(ExprPtr target, p.Primary());
      while (p.IsOp(".")) {  // ns.attr
        p.Next();
        auto a = std::make_unique<Expr>();
        a->kind = Expr::kAttr;
        a->name = p.Next().text;
        a->args.push_back(std::move(target));
        target = std::move(a);
      }
      if (p.IsOp(",")) return p.Error("unpacking in 'set' is not implemented");
      n->exprs.push_back(std::move(target));
      if (p.Peek().kind == Token::kEnd) {  // {% set x %}...{% endset %}
        n->kind = Node::kSetBlock;
        n->bodies.emplace_back();
        MC_ASSIGN_OR_RETURN(std::string ended, ParseBody(&n->bodies.back(), {"endset"}));
      } else {
        n->kind = Node::kSet;
        MC_RETURN_IF_ERROR(p.Expect("="));
        MC_ASSIGN_OR_RETURN(ExprPtr v, p.Tuple());
        if (p.Peek().kind != Token::kEnd) return p.Error("unexpected '" + p.Peek().text + "' in 'set'");
        n->exprs.push_back(std::move(v));
      }
    } else if (word == "macro") {
      n->kind = Node::kMacro;
      if (p.Peek().kind != Token::kName) return p.Error("a name must follow 'macro'");
      n->text = p.Next().text;
      MC_RETURN_IF_ERROR(p.Expect("("));
      while (!p.IsOp(")")) {
        if (p.Peek().kind != Token::kName) return p.Error("a parameter name was expected");
        n->names.push_back(p.Next().text);
        ExprPtr def;
        if (p.IsOp("=")) {
          p.Next();
          MC_ASSIGN_OR_RETURN(def, p.Expression());
        }
        n->defaults.push_back(std::move(def));
        if (!p.IsOp(",")) break;
        p.Next();
      }
      MC_RETURN_IF_ERROR(p.Expect(")"));
      n->bodies.emplace_back();
      MC_ASSIGN_OR_RETURN(std::string ended, ParseBody(&n->bodies.back(), {"endmacro"}));
    } else if (word == "break" || word == "continue") {
      n->kind = word == "break" ? Node::kBreak : Node::kContinue;
    } else if (word == "generation") {  // transformers' assistant-mask extension: renders its body
      n->kind = Node::kBlock;
      n->bodies.emplace_back();
      MC_ASSIGN_OR_RETURN(std::string ended, ParseBody(&n->bodies.back(), {"endgeneration"}));
    } else {
      return p.Error("the statement '" + word + "' is not implemented");
    }
    body->push_back(std::move(n));
    return Status::Ok();
  }

  std::vector<Segment> s_;
  size_t pos_ = 0;
  std::string where_;
  std::unique_ptr<ExprParser> end_parser_;  // the ending statement's tokens (elif's condition)
};

// ---------------------------------------------------------------------------------------------
// Rendering.
enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const std::string& where) : where_(where) {
    scopes_.emplace_back();
    DefineGlobals(&scopes_.front());
  }

  // jinja2's globals and transformers' own (raise_exception, strftime_now).
  static void DefineGlobals(std::map<std::string, Value>* g) {
    using Kw = std::vector<std::pair<std::string, Value>>;
    (*g)["raise_exception"] = Value::Fn([](std::vector<Value>& args, Kw&) -> Result<Value> {
      return InvalidArgument(args.empty() ? std::string("the chat template raised an exception") : Str(args[0]));
    });
    (*g)["namespace"] = Value::Fn([](std::vector<Value>& args, Kw& kw) -> Result<Value> {
      Value ns{Value::kNamespace};
      ns.dict = std::make_shared<Dict>();
      if (!args.empty() && args[0].kind == Value::kDict) *ns.dict = *args[0].dict;
      for (auto& [k, v] : kw) ns.dict->emplace_back(k, v);
      return ns;
    });
    (*g)["range"] = Value::Fn([](std::vector<Value>& args, Kw&) -> Result<Value> {
      int64_t start = 0, stop = 0, step = 1;
      if (args.size() == 1) stop = args[0].i;
      if (args.size() >= 2) start = args[0].i, stop = args[1].i;
      if (args.size() == 3) step = args[2].i;
      if (step == 0) return InvalidArgument("range() step must not be zero");
      List l;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) l.push_back(Value::Int(i));
      return Value::MakeList(std::move(l));
    });
    (*g)["strftime_now"] = Value::Fn([](std::vector<Value>& args, Kw&) -> Result<Value> {
      char buf[256];
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      const size_t n = std::strftime(buf, sizeof(buf), args.empty() ? "" : args[0].s.c_str(), &tm);
      return Value::Str(std::string(buf, n));
    });
    (*g)["dict"] = Value::Fn([](std::vector<Value>&, Kw& kw) -> Result<Value> {
      Dict d;
      for (auto& [k, v] : kw) d.emplace_back(k, v);
      return Value::MakeDict(std::move(d));
    });
  }
  std::vector<std::map<std::string, Value>> scopes_;

  Status Error(int line, const std::string& what) const {
    return InvalidArgument(where_ + ", line " + std::to_string(line) + ": " + what);
  }
  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value();
  }

  Result<Flow> Run(const Body& body, std::string* out) {
    for (const auto& n : body) {
      MC_ASSIGN_OR_RETURN(Flow f, RunNode(*n, out));
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Result<Flow> RunNode(const Node& n, std::string* out) {
    switch (n.kind) {
      case Node::kText: *out += n.text; return Flow::kNormal;
      case Node::kOutput: {
        MC_ASSIGN_OR_RETURN(Value v, Eval(*n.exprs[0]));
        *out += Str(v);
        return Flow::kNormal;
      }
      case Node::kIf:
        for (size_t k = 0; k < n.exprs.size(); ++k) {
          MC_ASSIGN_OR_RETURN(Value c, Eval(*n.exprs[k]));
          if (Truthy(c)) return Run(n.bodies[k], out);
        }
        if (n.bodies.size() > n.exprs.size()) return Run(n.bodies.back(), out);
        return Flow::kNormal;
      case Node::kFor: return RunFor(n, out);
      case Node::kSet: {
        MC_ASSIGN_OR_RETURN(Value v, Eval(*n.exprs[1]));
        MC_RETURN_IF_ERROR(Assign(*n.exprs[0], std::move(v), n.line));
        return Flow::kNormal;
      }
      case Node::kSetBlock: {
        std::string captured;
        MC_ASSIGN_OR_RETURN(Flow f, Run(n.bodies[0], &captured));
        (void)f;
        MC_RETURN_IF_ERROR(Assign(*n.exprs[0], Value::Str(captured), n.line));
        return Flow::kNormal;
      }
      case Node::kMacro: {
        const Node* macro = &n;
        auto globals = scopes_.front();
        scopes_.back()[n.text] = Value::Fn([this, macro](std::vector<Value>& args,
                                                         std::vector<std::pair<std::string, Value>>& kw) -> Result<Value> {
          std::map<std::string, Value> local;
          for (size_t k = 0; k < macro->names.size(); ++k) {
            if (k < args.size()) {
              local[macro->names[k]] = args[k];
            } else if (macro->defaults[k]) {
              MC_ASSIGN_OR_RETURN(local[macro->names[k]], Eval(*macro->defaults[k]));
            }
          }
          for (auto& [key, v] : kw) local[key] = v;
          scopes_.push_back(std::move(local));
          std::string text;
          auto r = Run(macro->bodies[0], &text);
          scopes_.pop_back();
          MC_RETURN_IF_ERROR(r.status());
          return Value::Str(text);
        });
        return Flow::kNormal;
      }
      case Node::kBreak: return Flow::kBreak;
      case Node::kContinue: return Flow::kContinue;
      case Node::kBlock: return Run(n.bodies[0], out);
    }
    return Flow::kNormal;
  }

  Status Assign(const Expr& target, Value v, int line) {
    if (target.kind == Expr::kName) {
      scopes_.back()[target.name] = std::move(v);
      return Status::Ok();
    }
    if (target.kind == Expr::kAttr) {
      MC_ASSIGN_OR_RETURN(Value ns, Eval(*target.args[0]));
      if (ns.kind != Value::kNamespace) return Error(line, "only a namespace's attributes can be set");
      for (auto& [k, old] : *ns.dict) {
        if (k == target.name) return old = std::move(v), Status::Ok();
      }
      ns.dict->emplace_back(target.name, std::move(v));
      return Status::Ok();
    }
    return Error(line, "cannot assign to this expression");
  }

  Result<Flow> RunFor(const Node& n, std::string* out) {
    MC_ASSIGN_OR_RETURN(Value iter, Eval(*n.exprs[0]));
    List items;
    if (iter.kind == Value::kList) {
      items = *iter.list;
    } else if (iter.kind == Value::kDict) {
      for (const auto& [k, v] : *iter.dict) items.push_back(Value::Str(k));
    } else if (iter.kind == Value::kString) {
      for (auto& c : Chars(iter.s)) items.push_back(Value::Str(c));
    } else if (iter.kind == Value::kUndefined || iter.kind == Value::kNone) {
      if (iter.kind == Value::kNone) return Error(n.line, "'NoneType' object is not iterable");
    } else {
      return Error(n.line, "the value looped over is not iterable");
    }
    // The filter condition chooses the items before `loop` counts them.
    List chosen;
    for (auto& item : items) {
      if (n.exprs.size() > 1) {
        scopes_.emplace_back();
        BindTargets(n, item);
        auto c = Eval(*n.exprs[1]);
        scopes_.pop_back();
        MC_RETURN_IF_ERROR(c.status());
        if (!Truthy(*c)) continue;
      }
      chosen.push_back(item);
    }
    if (chosen.empty()) {
      if (n.bodies.size() > 1) {
        scopes_.emplace_back();
        auto r = Run(n.bodies[1], out);
        scopes_.pop_back();
        MC_RETURN_IF_ERROR(r.status());
      }
      return Flow::kNormal;
    }
    const int64_t len = static_cast<int64_t>(chosen.size());
    for (int64_t k = 0; k < len; ++k) {
      scopes_.emplace_back();
      BindTargets(n, chosen[k]);
      Dict loop = {{"index", Value::Int(k + 1)},          {"index0", Value::Int(k)},
                   {"revindex", Value::Int(len - k)},     {"revindex0", Value::Int(len - k - 1)},
                   {"first", Value::Bool(k == 0)},        {"last", Value::Bool(k == len - 1)},
                   {"length", Value::Int(len)},
                   {"previtem", k > 0 ? chosen[k - 1] : Value()},
                   {"nextitem", k + 1 < len ? chosen[k + 1] : Value()}};
      scopes_.back()["loop"] = Value::MakeDict(std::move(loop));
      auto r = Run(n.bodies[0], out);
      scopes_.pop_back();
      MC_RETURN_IF_ERROR(r.status());
      if (*r == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void BindTargets(const Node& n, const Value& item) {
    if (n.names.size() == 1) {
      scopes_.back()[n.names[0]] = item;
      return;
    }
    for (size_t k = 0; k < n.names.size(); ++k) {
      scopes_.back()[n.names[k]] = item.kind == Value::kList && k < item.list->size() ? (*item.list)[k] : Value();
    }
  }

  Result<Value> Eval(const Expr& e);
  Result<Value> Binary(const Expr& e);
  Result<Value> Filter(const Expr& e);
  Result<Value> Test(const Expr& e);
  Result<Value> Call(const Expr& e);
  Result<Value> Method(const Value& self, const std::string& name, std::vector<Value>& args, int line);
  Result<Value> Attr(const Value& obj, const std::string& name, int line);

  std::string where_;
};

Result<int64_t> Index(int64_t i, size_t size) {
  if (i < 0) i += static_cast<int64_t>(size);
  return i;
}

Result<Value> Renderer::Attr(const Value& obj, const std::string& name, int line) {
  if (obj.kind == Value::kDict || obj.kind == Value::kNamespace) {
    if (const Value* v = obj.Find(name)) return *v;
  }
  if (obj.kind == Value::kList && !name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
    const int64_t i = std::stoll(name);
    if (i < static_cast<int64_t>(obj.list->size())) return (*obj.list)[i];
  }
  // A method, bound: called later.
  if (obj.kind == Value::kString || obj.kind == Value::kDict || obj.kind == Value::kList) {
    static const char* methods[] = {"startswith", "endswith", "split", "strip", "lstrip", "rstrip", "upper",
                                    "lower", "title", "capitalize", "replace", "items", "keys", "values",
                                    "get", "count", "find", "join", "rsplit", "splitlines", "isdigit", "isspace"};
    for (const char* m : methods) {
      if (name == m) {
        Value self = obj;
        return Value::Fn([this, self, name, line](std::vector<Value>& args, std::vector<std::pair<std::string, Value>>&) {
          return Method(self, name, args, line);
        });
      }
    }
  }
  (void)line;
  return Value();  // undefined
}

Result<Value> Renderer::Method(const Value& self, const std::string& name, std::vector<Value>& args, int line) {
  auto arg_str = [&](size_t k) -> std::optional<std::string> {
    if (k < args.size() && args[k].kind == Value::kString) return args[k].s;
    return std::nullopt;
  };
  if (self.kind == Value::kString) {
    const std::string& s = self.s;
    if (name == "startswith" || name == "endswith") {
      std::vector<std::string> options;
      if (args.empty()) return Error(line, name + " takes an argument");
      if (args[0].kind == Value::kList) {
        for (const auto& o : *args[0].list) options.push_back(o.s);
      } else {
        options.push_back(args[0].s);
      }
      for (const auto& o : options) {
        if (name == "startswith" ? s.rfind(o, 0) == 0
                                 : s.size() >= o.size() && s.compare(s.size() - o.size(), o.size(), o) == 0) {
          return Value::Bool(true);
        }
      }
      return Value::Bool(false);
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const auto chars = args.empty() || args[0].kind == Value::kNone ? std::nullopt : arg_str(0);
      return Value::Str(Strip(s, chars, name != "rstrip", name != "lstrip"));
    }
    if (name == "upper" || name == "lower") {
      std::string r = s;
      for (auto& c : r) c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c))
                                                             : std::tolower(static_cast<unsigned char>(c)));
      return Value::Str(r);
    }
    if (name == "title" || name == "capitalize") {
      std::string r = s;
      bool start = true;
      for (auto& c : r) {
        const bool alpha = std::isalpha(static_cast<unsigned char>(c));
        c = static_cast<char>(start && alpha ? std::toupper(static_cast<unsigned char>(c))
                                             : (name == "capitalize" || alpha) ? std::tolower(static_cast<unsigned char>(c)) : c);
        if (name == "capitalize") start = false;
        else start = !alpha;
      }
      return Value::Str(r);
    }
    if (name == "replace") {
      if (args.size() < 2) return Error(line, "replace takes two arguments");
      std::string r;
      const std::string& from = args[0].s;
      if (from.empty()) return Value::Str(s);
      size_t at = 0;
      for (size_t f = s.find(from); f != std::string::npos; f = s.find(from, at)) {
        r += s.substr(at, f - at) + args[1].s;
        at = f + from.size();
      }
      return Value::Str(r + s.substr(at));
    }
    if (name == "split" || name == "rsplit") {
      List parts;
      const auto sep = arg_str(0);
      if (!sep) {  // runs of whitespace, none at the ends
        size_t i = 0;
        while (i < s.size()) {
          while (i < s.size() && IsSpace(static_cast<unsigned char>(s[i]))) ++i;
          if (i >= s.size()) break;
          size_t j = i;
          while (j < s.size() && !IsSpace(static_cast<unsigned char>(s[j]))) ++j;
          parts.push_back(Value::Str(s.substr(i, j - i)));
          i = j;
        }
        return Value::MakeList(std::move(parts));
      }
      if (sep->empty()) return Error(line, "empty separator");
      size_t at = 0;
      for (size_t f = s.find(*sep); f != std::string::npos; f = s.find(*sep, at)) {
        parts.push_back(Value::Str(s.substr(at, f - at)));
        at = f + sep->size();
      }
      parts.push_back(Value::Str(s.substr(at)));
      return Value::MakeList(std::move(parts));
    }
    if (name == "count") {
      const auto sub = arg_str(0);
      if (!sub || sub->empty()) return Error(line, "count takes a non-empty string");
      int64_t n = 0;
      for (size_t f = s.find(*sub); f != std::string::npos; f = s.find(*sub, f + sub->size())) ++n;
      return Value::Int(n);
    }
    if (name == "find") {
      const auto sub = arg_str(0);
      if (!sub) return Error(line, "find takes a string");
      const size_t f = s.find(*sub);
      return Value::Int(f == std::string::npos ? -1 : static_cast<int64_t>(Chars(s.substr(0, f)).size()));
    }
    if (name == "join") {
      if (args.empty() || args[0].kind != Value::kList) return Error(line, "join takes a list");
      std::string r;
      for (size_t k = 0; k < args[0].list->size(); ++k) r += (k ? s : "") + Str((*args[0].list)[k]);
      return Value::Str(r);
    }
    if (name == "isdigit" || name == "isspace") {
      if (s.empty()) return Value::Bool(false);
      return Value::Bool(std::all_of(s.begin(), s.end(), [&](char c) {
        return name == "isdigit" ? std::isdigit(static_cast<unsigned char>(c)) != 0 : IsSpace(static_cast<unsigned char>(c));
      }));
    }
    if (name == "splitlines") {
      List parts;
      size_t at = 0;
      while (at < s.size()) {
        size_t nl = s.find('\n', at);
        if (nl == std::string::npos) nl = s.size();
        parts.push_back(Value::Str(s.substr(at, nl - at)));
        at = nl + 1;
      }
      return Value::MakeList(std::move(parts));
    }
  }
  if (self.kind == Value::kDict) {
    if (name == "items" || name == "keys" || name == "values") {
      List r;
      for (const auto& [k, v] : *self.dict) {
        if (name == "items") r.push_back(Value::MakeList({Value::Str(k), v}));
        else r.push_back(name == "keys" ? Value::Str(k) : v);
      }
      return Value::MakeList(std::move(r));
    }
    if (name == "get") {
      if (args.empty()) return Error(line, "get takes a key");
      if (const Value* v = self.Find(Str(args[0]))) return *v;
      return args.size() > 1 ? args[1] : Value::None();
    }
  }
  return Error(line, "the method '" + name + "' is not implemented for this value");
}

Result<Value> Renderer::Eval(const Expr& e) {
  switch (e.kind) {
    case Expr::kLiteral: return e.value;
    case Expr::kName: return Lookup(e.name);
    case Expr::kList: case Expr::kTuple: {
      List l;
      for (const auto& a : e.args) {
        MC_ASSIGN_OR_RETURN(Value v, Eval(*a));
        l.push_back(std::move(v));
      }
      return Value::MakeList(std::move(l));
    }
    case Expr::kDict: {
      Dict d;
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        MC_ASSIGN_OR_RETURN(Value key, Eval(*e.args[k]));
        MC_ASSIGN_OR_RETURN(Value v, Eval(*e.args[k + 1]));
        d.emplace_back(Str(key), std::move(v));
      }
      return Value::MakeDict(std::move(d));
    }
    case Expr::kAttr: {
      MC_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      return Attr(obj, e.name, e.line);
    }
    case Expr::kItem: {
      MC_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      MC_ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
      if (obj.kind == Value::kList && key.kind == Value::kInt) {
        MC_ASSIGN_OR_RETURN(int64_t i, Index(key.i, obj.list->size()));
        if (i < 0 || i >= static_cast<int64_t>(obj.list->size())) return Value();
        return (*obj.list)[i];
      }
      if (obj.kind == Value::kString && key.kind == Value::kInt) {
        auto chars = Chars(obj.s);
        MC_ASSIGN_OR_RETURN(int64_t i, Index(key.i, chars.size()));
        if (i < 0 || i >= static_cast<int64_t>(chars.size())) return Value();
        return Value::Str(chars[i]);
      }
      if (key.kind == Value::kString) return Attr(obj, key.s, e.line);
      return Value();
    }
    case Expr::kSlice: {
      MC_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      std::optional<int64_t> parts[3];
      for (int k = 0; k < 3; ++k) {
        if (!e.args[k + 1]) continue;
        MC_ASSIGN_OR_RETURN(Value v, Eval(*e.args[k + 1]));
        if (v.kind == Value::kNone) continue;
        if (v.kind != Value::kInt) return Error(e.line, "slice indices must be integers");
        parts[k] = v.i;
      }
      List items;
      bool is_string = obj.kind == Value::kString;
      if (is_string) {
        for (auto& c : Chars(obj.s)) items.push_back(Value::Str(c));
      } else if (obj.kind == Value::kList) {
        items = *obj.list;
      } else {
        return Error(e.line, "only lists and strings can be sliced");
      }
      const int64_t n = static_cast<int64_t>(items.size()), step = parts[2].value_or(1);
      if (step == 0) return Error(e.line, "slice step cannot be zero");
      auto clamp = [&](std::optional<int64_t> v, int64_t def) {
        if (!v) return def;
        int64_t x = *v < 0 ? *v + n : *v;
        if (step > 0) return std::clamp<int64_t>(x, 0, n);
        return std::clamp<int64_t>(x, -1, n - 1);
      };
      const int64_t start = clamp(parts[0], step > 0 ? 0 : n - 1), stop = clamp(parts[1], step > 0 ? n : -1);
      List out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(items[i]);
      if (!is_string) return Value::MakeList(std::move(out));
      std::string s;
      for (const auto& c : out) s += c.s;
      return Value::Str(s);
    }
    case Expr::kCall: return Call(e);
    case Expr::kFilter: return Filter(e);
    case Expr::kTest: return Test(e);
    case Expr::kUnary: {
      MC_ASSIGN_OR_RETURN(Value x, Eval(*e.args[0]));
      if (e.name == "not") return Value::Bool(!Truthy(x));
      if (x.kind == Value::kInt) return Value::Int(e.name == "-" ? -x.i : x.i);
      if (x.kind == Value::kFloat) return Value::Float(e.name == "-" ? -x.f : x.f);
      return Error(e.line, "bad operand for unary " + e.name);
    }
    case Expr::kBinary: return Binary(e);
    case Expr::kCond: {
      MC_ASSIGN_OR_RETURN(Value c, Eval(*e.args[0]));
      return Eval(*e.args[Truthy(c) ? 1 : 2]);
    }
  }
  return Value();
}

Result<Value> Renderer::Binary(const Expr& e) {
  const std::string& op = e.name;
  MC_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
  if (op == "and") return Truthy(a) ? Eval(*e.args[1]) : Result<Value>(a);
  if (op == "or") return Truthy(a) ? Result<Value>(a) : Eval(*e.args[1]);
  MC_ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
  if (op == "==") return Value::Bool(Equal(a, b));
  if (op == "!=") return Value::Bool(!Equal(a, b));
  if (op == "~") return Value::Str(Str(a) + Str(b));
  if (op == "in" || op == "not in") {
    bool in = false;
    if (b.kind == Value::kString) {
      if (a.kind != Value::kString) return Error(e.line, "'in <string>' requires a string on the left");
      in = b.s.find(a.s) != std::string::npos;
    } else if (b.kind == Value::kList) {
      in = std::any_of(b.list->begin(), b.list->end(), [&](const Value& x) { return Equal(a, x); });
    } else if (b.kind == Value::kDict || b.kind == Value::kNamespace) {
      in = b.Find(Str(a)) != nullptr;
    } else {
      return Error(e.line, "the right side of 'in' is not a container");
    }
    return Value::Bool(op == "in" ? in : !in);
  }
  if (op == "<" || op == ">" || op == "<=" || op == ">=") {
    int c;
    if (a.IsNumber() && b.IsNumber()) {
      c = a.Num() < b.Num() ? -1 : a.Num() > b.Num() ? 1 : 0;
    } else if (a.kind == Value::kString && b.kind == Value::kString) {
      c = a.s.compare(b.s);
    } else {
      return Error(e.line, "'" + op + "' is not supported between these values");
    }
    return Value::Bool(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
  }
  if (op == "+") {
    if (a.kind == Value::kString && b.kind == Value::kString) return Value::Str(a.s + b.s);
    if (a.kind == Value::kList && b.kind == Value::kList) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::MakeList(std::move(l));
    }
  }
  if (a.IsNumber() && b.IsNumber()) {
    const bool ints = a.kind != Value::kFloat && b.kind != Value::kFloat;
    const int64_t ai = a.kind == Value::kBool ? a.b : a.i, bi = b.kind == Value::kBool ? b.b : b.i;
    if (op == "+") return ints ? Value::Int(ai + bi) : Value::Float(a.Num() + b.Num());
    if (op == "-") return ints ? Value::Int(ai - bi) : Value::Float(a.Num() - b.Num());
    if (op == "*") return ints ? Value::Int(ai * bi) : Value::Float(a.Num() * b.Num());
    if (op == "/") {
      if (b.Num() == 0) return Error(e.line, "division by zero");
      return Value::Float(a.Num() / b.Num());
    }
    if (op == "//" || op == "%") {
      if (b.Num() == 0) return Error(e.line, "division by zero");
      if (ints) {
        int64_t q = ai / bi, r = ai % bi;
        if (r != 0 && ((r < 0) != (bi < 0))) --q, r += bi;  // Python floors
        return Value::Int(op == "//" ? q : r);
      }
      const double q = std::floor(a.Num() / b.Num());
      return Value::Float(op == "//" ? q : a.Num() - q * b.Num());
    }
    if (op == "**") return ints && bi >= 0 ? Value::Int(static_cast<int64_t>(std::pow(ai, bi))) : Value::Float(std::pow(a.Num(), b.Num()));
  }
  if (op == "*" && ((a.kind == Value::kString && b.kind == Value::kInt) || (a.kind == Value::kInt && b.kind == Value::kString))) {
    const std::string& s = a.kind == Value::kString ? a.s : b.s;
    std::string r;
    for (int64_t k = 0; k < (a.kind == Value::kInt ? a.i : b.i); ++k) r += s;
    return Value::Str(r);
  }
  return Error(e.line, "unsupported operand types for " + op);
}

Result<Value> Renderer::Call(const Expr& e) {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kw;
  for (size_t k = 1; k < e.args.size(); ++k) {
    MC_ASSIGN_OR_RETURN(Value v, Eval(*e.args[k]));
    args.push_back(std::move(v));
  }
  for (const auto& [key, x] : e.kwargs) {
    MC_ASSIGN_OR_RETURN(Value v, Eval(*x));
    kw.emplace_back(key, std::move(v));
  }
  MC_ASSIGN_OR_RETURN(Value fn, Eval(*e.args[0]));
  if (fn.kind != Value::kFunction) {
    return Error(e.line, e.args[0]->kind == Expr::kName ? "'" + e.args[0]->name + "' is undefined or not callable"
                                                        : std::string("the value called is not callable"));
  }
  return (*fn.fn)(args, kw);
}

Result<Value> Renderer::Filter(const Expr& e) {
  MC_ASSIGN_OR_RETURN(Value x, Eval(*e.args[0]));
  std::vector<Value> args;
  std::map<std::string, Value> kw;
  for (size_t k = 1; k < e.args.size(); ++k) {
    MC_ASSIGN_OR_RETURN(Value v, Eval(*e.args[k]));
    args.push_back(std::move(v));
  }
  for (const auto& [key, a] : e.kwargs) {
    MC_ASSIGN_OR_RETURN(kw[key], Eval(*a));
  }
  const std::string& f = e.name;
  auto arg = [&](size_t k, const char* name) -> std::optional<Value> {
    if (k < args.size()) return args[k];
    auto it = kw.find(name);
    if (it != kw.end()) return it->second;
    return std::nullopt;
  };
  if (f == "length" || f == "count") {
    if (x.kind == Value::kString) return Value::Int(static_cast<int64_t>(Chars(x.s).size()));
    if (x.kind == Value::kList) return Value::Int(static_cast<int64_t>(x.list->size()));
    if (x.kind == Value::kDict) return Value::Int(static_cast<int64_t>(x.dict->size()));
    if (x.kind == Value::kUndefined) return Value::Int(0);
    return Error(e.line, "the value has no length");
  }
  if (f == "trim") {
    const auto chars = arg(0, "chars");
    return Value::Str(Strip(Str(x), chars && chars->kind == Value::kString ? std::optional(chars->s) : std::nullopt,
                            true, true));
  }
  if (f == "tojson") {
    const auto indent = arg(0, "indent");
    const auto sort = kw.count("sort_keys") ? std::optional(kw["sort_keys"]) : std::nullopt;
    std::string out;
    MC_RETURN_IF_ERROR(ToJson(x, indent && indent->kind == Value::kInt ? static_cast<int>(indent->i) : -1, 0,
                              sort && Truthy(*sort), &out));
    return Value::Str(out);
  }
  if (f == "string") return Value::Str(Str(x));
  if (f == "lower" || f == "upper" || f == "title" || f == "capitalize") {
    std::vector<Value> none;
    return Method(Value::Str(Str(x)), f, none, e.line);
  }
  if (f == "replace") {
    std::vector<Value> a = args;
    return Method(Value::Str(Str(x)), "replace", a, e.line);
  }
  if (f == "first" || f == "last") {
    if (x.kind == Value::kList) return x.list->empty() ? Value() : f == "first" ? x.list->front() : x.list->back();
    if (x.kind == Value::kString) {
      auto c = Chars(x.s);
      return c.empty() ? Value() : Value::Str(f == "first" ? c.front() : c.back());
    }
    return Error(e.line, f + " needs a list or a string");
  }
  if (f == "join") {
    if (x.kind != Value::kList) return Error(e.line, "join needs a list");
    const auto sep = arg(0, "d");
    std::string r;
    for (size_t k = 0; k < x.list->size(); ++k) r += (k && sep ? Str(*sep) : "") + Str((*x.list)[k]);
    return Value::Str(r);
  }
  if (f == "default" || f == "d") {
    const auto def = arg(0, "default_value");
    const auto boolean = arg(1, "boolean");
    const bool use = x.kind == Value::kUndefined || (boolean && Truthy(*boolean) && !Truthy(x));
    return use ? (def ? *def : Value::Str("")) : x;
  }
  if (f == "list") {
    if (x.kind == Value::kList) return x;
    List l;
    if (x.kind == Value::kString) for (auto& c : Chars(x.s)) l.push_back(Value::Str(c));
    if (x.kind == Value::kDict) for (const auto& [k, v] : *x.dict) l.push_back(Value::Str(k));
    return Value::MakeList(std::move(l));
  }
  if (f == "items") {
    if (x.kind != Value::kDict) return x.kind == Value::kUndefined ? Value::MakeList() : Result<Value>(Error(e.line, "items needs a mapping"));
    std::vector<Value> none;
    return Method(x, "items", none, e.line);
  }
  if (f == "reverse") {
    if (x.kind == Value::kList) {
      List l(x.list->rbegin(), x.list->rend());
      return Value::MakeList(std::move(l));
    }
    auto c = Chars(Str(x));
    std::string r;
    for (auto it = c.rbegin(); it != c.rend(); ++it) r += *it;
    return Value::Str(r);
  }
  if (f == "int") {
    if (x.kind == Value::kInt) return x;
    if (x.kind == Value::kFloat) return Value::Int(static_cast<int64_t>(x.f));
    if (x.kind == Value::kString) {
      char* end = nullptr;
      const long long v = std::strtoll(x.s.c_str(), &end, 10);
      return Value::Int(end && *end == 0 && !x.s.empty() ? v : 0);
    }
    return Value::Int(0);
  }
  if (f == "abs") return x.kind == Value::kInt ? Value::Int(std::llabs(x.i)) : Value::Float(std::fabs(x.Num()));
  if (f == "selectattr" || f == "rejectattr") {
    if (x.kind != Value::kList) return x.kind == Value::kUndefined ? Value::MakeList() : Result<Value>(Error(e.line, f + " needs a list"));
    if (args.empty()) return Error(e.line, f + " needs an attribute");
    List out;
    for (const auto& item : *x.list) {
      MC_ASSIGN_OR_RETURN(Value v, Attr(item, Str(args[0]), e.line));
      bool pass = Truthy(v);
      if (args.size() > 1) {
        const std::string test = Str(args[1]);
        if (test == "equalto" || test == "eq" || test == "==") pass = args.size() > 2 && Equal(v, args[2]);
        else if (test == "defined") pass = v.kind != Value::kUndefined;
        else if (test == "undefined") pass = v.kind == Value::kUndefined;
        else if (test == "none") pass = v.kind == Value::kNone;
        else if (test == "ne" || test == "!=") pass = args.size() > 2 && !Equal(v, args[2]);
        else return Error(e.line, "the test '" + test + "' in " + f + " is not implemented");
      }
      if (pass == (f == "selectattr")) out.push_back(item);
    }
    return Value::MakeList(std::move(out));
  }
  if (f == "map") {
    if (x.kind != Value::kList) return Error(e.line, "map needs a list");
    auto attribute = kw.find("attribute");
    List out;
    for (const auto& item : *x.list) {
      if (attribute != kw.end()) {
        MC_ASSIGN_OR_RETURN(Value v, Attr(item, Str(attribute->second), e.line));
        out.push_back(v);
      } else if (!args.empty() && Str(args[0]) == "string") {
        out.push_back(Value::Str(Str(item)));
      } else {
        return Error(e.line, "this use of map is not implemented");
      }
    }
    return Value::MakeList(std::move(out));
  }
  if (f == "unique") {
    if (x.kind != Value::kList) return Error(e.line, "unique needs a list");
    List out;
    for (const auto& item : *x.list) {
      if (std::none_of(out.begin(), out.end(), [&](const Value& o) { return Equal(o, item); })) out.push_back(item);
    }
    return Value::MakeList(std::move(out));
  }
  if (f == "indent") {
    const auto width = arg(0, "width");
    const auto first = arg(1, "first");
    const std::string pad(width && width->kind == Value::kInt ? static_cast<size_t>(width->i) : 4, ' ');
    std::string s = Str(x), r;
    bool line_start = first && Truthy(*first);
    for (char c : s) {
      if (line_start && c != '\n') r += pad;
      r += c;
      line_start = c == '\n';
    }
    return Value::Str(r);
  }
  return Error(e.line, "the filter '" + f + "' is not implemented");
}

Result<Value> Renderer::Test(const Expr& e) {
  MC_ASSIGN_OR_RETURN(Value x, Eval(*e.args[0]));
  std::optional<Value> other;
  if (e.args.size() > 1) {
    MC_ASSIGN_OR_RETURN(other, Eval(*e.args[1]));
  }
  const std::string& t = e.name;
  bool r;
  if (t == "defined") r = x.kind != Value::kUndefined;
  else if (t == "undefined") r = x.kind == Value::kUndefined;
  else if (t == "none") r = x.kind == Value::kNone;
  else if (t == "string") r = x.kind == Value::kString;
  else if (t == "number") r = x.kind == Value::kInt || x.kind == Value::kFloat;
  else if (t == "integer") r = x.kind == Value::kInt;
  else if (t == "float") r = x.kind == Value::kFloat;
  else if (t == "boolean") r = x.kind == Value::kBool;
  else if (t == "true") r = x.kind == Value::kBool && x.b;
  else if (t == "false") r = x.kind == Value::kBool && !x.b;
  else if (t == "mapping") r = x.kind == Value::kDict;
  else if (t == "iterable") r = x.kind == Value::kList || x.kind == Value::kDict || x.kind == Value::kString;
  else if (t == "sequence") r = x.kind == Value::kList || x.kind == Value::kString || x.kind == Value::kDict;
  else if (t == "callable") r = x.kind == Value::kFunction;
  else if (t == "equalto" || t == "eq" || t == "sameas") r = other && Equal(x, *other);
  else if (t == "ne") r = !(other && Equal(x, *other));
  else if (t == "odd" || t == "even") r = x.kind == Value::kInt && ((x.i % 2 != 0) == (t == "odd"));
  else if (t == "in") r = other && other->kind == Value::kList &&
                          std::any_of(other->list->begin(), other->list->end(), [&](const Value& o) { return Equal(x, o); });
  else return Error(e.line, "the test '" + t + "' is not implemented");
  return Value::Bool(e.negate ? !r : r);
}

}  // namespace

ChatTemplate::~ChatTemplate() = default;

Result<std::unique_ptr<ChatTemplate>> ChatTemplate::Parse(std::string_view source, const std::string& name) {
  MC_ASSIGN_OR_RETURN(auto segments, Segments(std::string(source), name));
  auto t = std::unique_ptr<ChatTemplate>(new ChatTemplate());
  t->name_ = name;
  Parser p(std::move(segments), name);
  MC_ASSIGN_OR_RETURN(std::string ended, p.ParseBody(&t->body_, {}));
  (void)ended;
  return t;
}

Result<std::string> ChatTemplate::Render(const nlohmann::ordered_json& context) const {
  Renderer r(name_);
  if (context.is_object()) {
    for (const auto& [k, v] : context.items()) r.scopes_.front()[k] = FromJson(v);
  }
  std::string out;
  MC_ASSIGN_OR_RETURN(Flow f, r.Run(body_, &out));
  (void)f;
  return out;
}

Result<std::unique_ptr<ChatSetup>> ChatSetupFromTokenizerConfig(std::string_view text, const std::string& where) {
  const auto config = ojson::parse(text, nullptr, false);
  if (!config.is_object()) return FailedPrecondition(where + " is not a JSON object");
  auto setup = std::make_unique<ChatSetup>();
  auto special = [&](const char* key) -> std::string {
    if (!config.contains(key) || config[key].is_null()) return "";
    return config[key].is_string() ? config[key].get<std::string>() : config[key].value("content", "");
  };
  setup->bos_token = special("bos_token");
  setup->eos_token = special("eos_token");
  const auto& t = config.value("chat_template", ojson());
  std::string plain, tools;
  if (t.is_string()) {
    plain = t.get<std::string>();
  } else if (t.is_array()) {
    for (const auto& named : t) {
      if (named.value("name", "") == "default") plain = named.value("template", "");
      if (named.value("name", "") == "tool_use") tools = named.value("template", "");
    }
  }
  if (plain.empty()) return FailedPrecondition(where + " has no chat template");
  MC_ASSIGN_OR_RETURN(setup->plain, ChatTemplate::Parse(plain, where + ": chat_template"));
  if (!tools.empty()) {
    MC_ASSIGN_OR_RETURN(setup->with_tools, ChatTemplate::Parse(tools, where + ": tool_use"));
  }
  return setup;
}

Result<std::string> ChatSetup::RenderForGeneration(nlohmann::ordered_json context) const {
  const bool tools = context.contains("tools") && context["tools"].is_array() && !context["tools"].empty();
  context["add_generation_prompt"] = true;
  context["bos_token"] = bos_token;
  context["eos_token"] = eos_token;
  return (tools && with_tools ? *with_tools : *plain).Render(context);
}

}  // namespace modelcast::text
